"""Export: turn a training run into what the Pi needs, and prove it before saying done.

    RUN/merged/          the adapter merged into float32 base weights     merge.py
    RUN/<name>-Q8_0.gguf the merged model for llama.cpp / Ollama          gguf/
    RUN/Modelfile        FROM ./<gguf>, the chat family's TEMPLATE and     modelfile.py
                         stops, SYSTEM, sampling
    RUN/verify.json      the proof: metadata, tokens, TEMPLATE, logits,   proof.py
                         stopping
    RUN/meshtastic_knowledge.txt  meshtune's knowledge file for the bot's /meshtastic
    RUN/DEPLOY.md        the ollama create command and the Mesh Master config change
    RUN/export.json      what was written, with time and peak memory (rundir.ExportInfo)

`meshtune deploy` (deploy.py, and remote.py over ssh) ships only a proven file.
"""

import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from meshtune import ollama
from meshtune.errors import MeshtuneError
from meshtune.export import modelfile
from meshtune.export.deploy import check_name, default_name
from meshtune.export.gguf import QUANTS, write_gguf
from meshtune.export.merge import merge
from meshtune.export.proof import verify
from meshtune.files import output_file, read_text, remove_stale_temps, write_text
from meshtune.meshmaster import OPTIONS
from meshtune.meshmaster.knowledge import OWN_KNOWLEDGE
from meshtune.rundir import ExportInfo, RunDir, Verification, load_trained

__all__ = ["QUANTS", "check_name", "export", "verify"]


def export(
    run_dir: str | Path,
    quant: str = "Q8_0",
    name: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[ExportInfo, Verification]:
    """Merge, write the GGUF, Modelfile and DEPLOY.md, then verify them all."""
    started = time.perf_counter()
    quant = quant.upper()
    if quant not in QUANTS:
        raise MeshtuneError(f"--quant {quant}: not offered; choose one of {', '.join(QUANTS)}")
    if name is not None:
        check_name(name)
    trained = load_trained(run_dir)
    run = RunDir(trained.dir)
    name = check_name(name or default_name(run.path))
    parameters = {**ollama.DEFAULT_PARAMETERS, **trained.ollama}
    ollama.check_parameters(parameters, f"{run.recipe}: ollama")  # before the slow part
    from meshtune.models import resolve

    resolve(trained.base_model)  # readable, before anything is written
    remove_stale_temps(run.path)  # left by an export that was killed
    stages: dict[str, float] = {}
    gguf_name = f"{name}-{quant}.gguf"
    outputs = [run.path / gguf_name, run.modelfile, run.knowledge, run.export_info,
               run.verification, run.deploy_note]  # fmt: skip
    for path in outputs:  # a folder or FIFO in their place fails now, not after the merge
        output_file(path, "an export output")
    with _stage(stages, "merge"):
        if trained.full:  # nothing to merge: the whole model trained
            progress(f"saving the fully fine-tuned {trained.adapter} in float32")
        else:
            progress(f"merging {trained.adapter} into {trained.base_model}")
        tokenizer = merge(trained, run.merged)
    with _stage(stages, "gguf"):
        progress(f"writing {gguf_name}")
        write_gguf(run.merged, run.path / gguf_name, quant, name, tokenizer)
    family = _write_modelfile(
        run,
        trained.base_model,
        tokenizer,
        gguf_name,
        quant,
        name,
        parameters,
        trained.system_prompt,
    )
    write_text(run.knowledge, read_text(OWN_KNOWLEDGE))
    info = ExportInfo(
        run=str(run.path),
        name=name,
        quant=quant,
        gguf=gguf_name,
        knowledge=run.knowledge.name,
        gguf_bytes=(run.path / gguf_name).stat().st_size,
        merged_bytes=sum(p.stat().st_size for p in run.merged.glob("*.safetensors")),
        family=family,
    )
    info.save(run.export_info)  # `meshtune verify` alone reads it
    with _stage(stages, "verify"):
        progress("verifying")
        verification = verify(run.path, info, tokenizer)
    info.verified = verification.ok
    info.seconds = round(time.perf_counter() - started, 1)
    info.stages = stages
    info.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_text(run.deploy_note, deploy_note(info, verification))
    info.save(run.export_info)
    return info, verification


@contextlib.contextmanager
def _stage(stages: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    stages[name] = round(time.perf_counter() - start, 1)


def _write_modelfile(
    run: RunDir,
    base_model: str,
    tokenizer: object,
    gguf_name: str,
    quant: str,
    name: str,
    parameters: dict[str, object],
    system: str,
) -> str:
    """RUN/Modelfile for the tokenizer's chat family; returns the family's name."""
    from meshtune import chat

    family = chat.family_of(tokenizer)
    text = modelfile.build(
        gguf_name=gguf_name,
        template=modelfile.template_for(tokenizer),
        system=system,
        parameters=parameters,
        stops=family.stops,
        header=(
            f"Ollama Modelfile for {name}, written by `meshtune export` from {run.path.name}.\n"
            f"Base {base_model}, chat family {family.name}, GGUF type {quant}.\n"
            f"On the Pi, in this folder: ollama create {name} -f Modelfile"
        ),
    )
    write_text(run.modelfile, text)
    return family.name


def deploy_note(info: ExportInfo, verification: Verification) -> str:
    status = "passed" if verification.ok else "FAILED (do not deploy; see verify.json)"
    opts = ", ".join(f"{k} {v}" for k, v in OPTIONS.items())
    checks = "\n".join(f"- {c.name}: {c.status}, {c.detail}" for c in verification.checks)
    return f"""# Deploying {info.name}

Written by `meshtune export` on {datetime.now(UTC):%Y-%m-%d}: `{info.gguf}`
({info.gguf_bytes / 1e6:.1f} MB, {info.quant}, chat family {info.family}) and `Modelfile`.
Verification {status}:

{checks}

## 1. Copy the files to the Pi, into one folder

    scp {info.gguf} Modelfile {info.knowledge} pi@<your-pi>:~/{info.name}/

`{info.knowledge}` is meshtune's Meshtastic knowledge file, written for the bot's
`/meshtastic` retrieval; point the config's `meshtastic_knowledge_file` at it (its full path).

## 2. Create the Ollama model (in that folder: FROM is relative to the Modelfile)

    ollama create {info.name} -f Modelfile

## 3. Point Mesh Master at it

In Mesh Master's `config.json`, change one key and restart the bot (the guide's service:
`sudo systemctl restart mesh-ai`):

    "ollama_model": "{info.name}",

On a machine with both meshtune and Ollama, steps 2 and 3 are one command (it installs the
knowledge file beside config.json, sets both keys and keeps a backup; `--dry-run` shows the
steps); over ssh, `--to pi@<your-pi>` does all three steps on the Pi:

    meshtune deploy {info.run} --name {info.name} --mesh-master-config config.json

## Mesh Master's options override the Modelfile

Mesh Master sends its own options with every request, and Ollama uses them instead of the
Modelfile's PARAMETER values:

    {opts}, num_ctx from its ollama_num_ctx

The Modelfile's sampling values apply only to clients that send none (`ollama run`, other
tools); its TEMPLATE, SYSTEM and stop tokens always apply. Judge the model under the bot's
values: `meshtune eval {info.run} --profile meshmaster`.

## Set ollama_num_ctx to 2048

Ollama cuts a prompt longer than num_ctx - 1 tokens to its first 4 tokens and its tail, about
half the context. A `/meshtastic` request is 820-1,180 tokens with this knowledge file and
1,750-2,020 with the bot's shipped one (SmolLM2's tokenizer, meshtune's knowledge suite); the
shipped config's `"ollama_num_ctx": 1024` leaves any longer one 514 tokens, losing the
instructions and the first excerpts. At 2048 every request of the suite arrives whole
(`meshtune kb check {info.knowledge} --num-ctx 2048`), for a larger KV cache. Set
`"ollama_num_ctx": 2048` in config.json.
"""
