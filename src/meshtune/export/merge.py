"""Merge: the run's LoRA adapter merged into float32 base weights, saved with the tokenizer
(chat template included) as a Hugging Face folder, RUN/merged/. A full fine-tune has nothing to
merge: its model is saved in float32 as RUN/merged/ (it may have trained in bf16)."""

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from meshtune import chat
from meshtune.errors import MeshtuneError
from meshtune.export.gguf import architecture
from meshtune.files import atomic_folder, read_json
from meshtune.rundir import Trained

# llama.cpp's and torch's OpenMP threads spin while they wait, so on a busy machine every extra
# thread costs more than it brings (the README's Export section has the measurements). Half the
# cores is also what Mesh Master gives Ollama (num_thread).
THREADS = max(1, (os.cpu_count() or 2) // 2)


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """torch on THREADS threads for a while."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def merge(run: Trained, out: Path) -> Any:
    """The adapter merged into float32 base weights, saved with the tokenizer as `out`;
    returns the tokenizer. Merging onto full precision, never onto a 4-bit base, keeps
    conversion sound (llama.cpp#12923)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from meshtune.models import resolve

    base = resolve(run.base_model)
    architecture(read_json(base.folder / "config.json", "fix the base model"), run.base_model)
    has_tokenizer = (run.adapter / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(run.adapter if has_tokenizer else base.folder)
    family = chat.family_of(tokenizer)
    if run.family and run.family != family.name:
        raise MeshtuneError(
            f"{run.dir}/train_summary.json: trained as {run.family}, but the tokenizer's chat "
            f"template is {family.name}; export from the tokenizer the run used"
        )
    with torch_threads(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers API
        if run.full:
            model = AutoModelForCausalLM.from_pretrained(run.adapter, dtype=torch.float32)
        else:
            model = _merged(run, base.folder)
    with atomic_folder(out, hidden=False, fix="check the disk and folder") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
    return tokenizer


def _merged(run: Trained, base_folder: Path) -> Any:
    """The base model in float32 with the run's LoRA adapter merged in."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    try:
        return PeftModel.from_pretrained(model, run.adapter).merge_and_unload()
    except (ValueError, RuntimeError, KeyError) as e:  # an adapter for another model
        first = str(e).splitlines()[0][:160]
        raise MeshtuneError(
            f"{run.adapter}: the adapter does not fit {run.base_model} ({first}); export "
            "with the base model the run trained"
        ) from e
