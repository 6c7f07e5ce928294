"""notebooks/meshtune_colab.ipynb runs top to bottom: executed by nbclient in a real Jupyter
kernel on the CPU with the embedded model and a few training steps, so the notebook cannot rot.

The only change from a user's run is one cell inserted after the parameters cell, as papermill
does: meshtune is already installed here (INSTALL = False), the run goes to a temporary folder,
training stops after two short steps, and the evaluation uses the guide's four quick prompts.
"""

import json
import os
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


def test_the_colab_notebook_executes_every_cell_on_cpu_with_the_embedded_model(tmp_path: Path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    run = tmp_path / "run"
    overrides = nbformat.v4.new_code_cell(
        "INSTALL = False\n"
        f"RUN_DIR = {str(run)!r}\n"
        "MAX_STEPS = 2\n"
        'OVERRIDES = ["sequence_len=512", "val_set_size=8"]\n'
        'SUITE = "quick"\n'
        "SAMPLES = 1\n"
    )
    nb.cells.insert(_parameters_index(nb) + 1, overrides)
    env_token = os.environ.pop("HF_TOKEN", None)  # "auto" must choose the embedded model
    try:
        # a cell that errors raises CellExecutionError here, naming the cell and the error
        where = {"metadata": {"path": str(NOTEBOOK.parent)}}  # the kernel starts in notebooks/
        NotebookClient(nb, timeout=600, kernel_name="python3", resources=where).execute()
    finally:
        if env_token is not None:
            os.environ["HF_TOKEN"] = env_token
    nbformat.write(nb, tmp_path / "executed.ipynb")  # for reading when this test fails

    printed = "\n".join(
        o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs
    )
    assert "base smollm2-135m (CPU), recipe recipes/embedded-cpu.yaml" in printed
    assert "0 errors" in printed  # data check
    assert json.loads((run / "train_summary.json").read_text())["steps"] == 2
    html = [
        o["data"]["text/html"]
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "text/html" in o.get("data", {})
    ]
    assert any("meshtune compare: A smollm2-135m vs B run" in h for h in html)
    assert any("<p id='verdict'" in h for h in html)  # the tuned model's report, inline
    export = json.loads((run / "export.json").read_text())
    with zipfile.ZipFile(run / "mesh-master-tuned-deploy.zip") as zf:
        assert sorted(zf.namelist()) == sorted([export["gguf"], "Modelfile", "DEPLOY.md"])
        assert zf.getinfo(export["gguf"]).file_size == (run / export["gguf"]).stat().st_size
