"""notebooks/meshtune_colab.ipynb runs top to bottom: executed by nbclient in a real Jupyter
kernel on the CPU with the embedded model and a few training steps, so the notebook cannot rot.

The only change from a user's run is one cell inserted after the parameters cell, as papermill
does: meshtune is already installed here (INSTALL = False), the run goes to a temporary folder,
training stops after two short steps, and the evaluation uses the guide's four quick prompts.
"""

import json
import os
import re
import zipfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from tests.conftest import REPO

NOTEBOOK = REPO / "notebooks" / "meshtune_colab.ipynb"


def _parameters_index(nb: nbformat.NotebookNode) -> int:
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged `parameters` holds every setting"
    return tagged[0]


def test_the_parameters_are_one_cell_near_the_top_and_nothing_else_sets_them():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    i = _parameters_index(nb)
    assert i <= 1
    names = [
        line.split("=")[0].strip()
        for line in nb.cells[i].source.splitlines()
        if "=" in line and not line.startswith("#")
    ]
    later = "\n".join(c.source for c in nb.cells[i + 1 :] if c.cell_type == "code")
    for name in names:
        assert f"\n{name} =" not in f"\n{later}", f"{name} is set again after the parameters cell"


def execute(tmp_path: Path, settings: str, env: dict[str, str]) -> tuple[str, list[str]]:
    """The notebook run top to bottom with `settings` as the cell after the parameters and
    `env` in the kernel's environment; returns what the cells printed and their HTML."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nb.cells.insert(_parameters_index(nb) + 1, nbformat.v4.new_code_cell(settings))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        # a cell that errors raises CellExecutionError here, naming the cell and the error
        where = {"metadata": {"path": str(NOTEBOOK.parent)}}  # the kernel starts in notebooks/
        NotebookClient(nb, timeout=600, kernel_name="python3", resources=where).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        nbformat.write(nb, tmp_path / "executed.ipynb")  # for reading when this test fails
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    printed = "\n".join(o.get("text", "") for o in outputs)
    html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    return printed, html


def check_bundle(run: Path) -> None:
    export = json.loads((run / "export.json").read_text())
    with zipfile.ZipFile(run / "mesh-master-tuned-deploy.zip") as zf:
        assert sorted(zf.namelist()) == sorted([export["gguf"], "Modelfile", "DEPLOY.md"])
        assert zf.getinfo(export["gguf"]).file_size == (run / export["gguf"]).stat().st_size


def trained_on(run: Path) -> list[str]:
    """The data files the run trained on, from the recipe it saved."""
    import yaml

    return [d["path"] for d in yaml.safe_load((run / "recipe.yaml").read_text())["datasets"]]


RECIPE_DATA = ["mesh_conversations.jsonl", "mesh_knowledge.jsonl"]  # both recipes' datasets
QUICK = 'INSTALL = False\nMAX_STEPS = 2\nSUITE = "quick"\nSAMPLES = 1\n'


def test_the_colab_notebook_executes_every_cell_on_cpu_with_the_embedded_model(tmp_path: Path):
    run = tmp_path / "run"
    settings = (
        QUICK + f'RUN_DIR = {str(run)!r}\nOVERRIDES = ["sequence_len=512", "val_set_size=8"]\n'
    )
    env_token = os.environ.pop("HF_TOKEN", None)  # "auto" must choose the embedded model
    try:
        printed, html = execute(tmp_path, settings, {})
    finally:
        if env_token is not None:
            os.environ["HF_TOKEN"] = env_token

    assert "base smollm2-135m (CPU), recipe recipes/embedded-cpu.yaml" in printed
    # with no DATA the recipe's own datasets train: the chats and the /meshtastic rows
    assert [Path(p).name for p in trained_on(run)] == RECIPE_DATA
    for name in RECIPE_DATA:  # each checked: no errors
        assert re.search(rf"data/{name}: \d+ rows, \d+ valid conversations, 0 errors", printed)
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 2
    assert any("meshtune compare: A smollm2-135m vs B run" in h for h in html)
    assert any("<p id='verdict'" in h for h in html)  # the tuned model's report, inline
    check_bundle(run)


def test_the_notebooks_llama_branch_runs_from_a_hugging_face_cache_offline(tmp_path: Path):
    """The 1B branch as a Colab user with a token runs it, on the CPU: the guide's recipe on a
    tiny stand-in for meta-llama/Llama-3.2-1B-Instruct (Meta's template) that the
    `snapshot_download` cell finds in the Hugging Face cache, offline; evaluation resolves the
    same id from the cache."""
    from benchmarks import standin
    from tests.tiny import llama32_tokenizer_from

    from meshtune.models import resolve

    llama32_tokenizer_from(resolve("smollm2-135m").folder).save_pretrained(tmp_path / "tok")
    standin.build(tmp_path / "tok", tmp_path / "hub", shape="tiny")
    run = tmp_path / "run"
    settings = QUICK + (
        f'RUN_DIR = {str(run)!r}\nBASE = "llama-3.2-1b"\nHF_TOKEN = "stand-in"\n'
        'OVERRIDES = ["val_set_size=8"]\nQUANT = "F16"\n'  # a float GGUF: quick to write and prove
    )
    env = {"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    printed, html = execute(tmp_path, settings, env)

    assert f"base {standin.REPO_ID} (CPU), recipe recipes/mesh-master-1b-v2.yaml" in printed
    assert [Path(p).name for p in trained_on(run)] == RECIPE_DATA
    summary = json.loads((run / "train_summary.json").read_text())
    assert (summary["steps"], summary["family"]) == (2, "llama3")
    assert any(f"meshtune compare: A {standin.REPO_ID} vs B run" in h for h in html)
    check_bundle(run)
