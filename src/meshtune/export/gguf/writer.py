"""The GGUF skeleton, written once for every architecture: header -> metadata (general,
hyper-parameters, vocabulary) -> tensor infos -> tensor data, one tensor in memory at a time.

What differs per architecture (its hyper-parameters, vocabulary, tensor names and layouts) is an
`Architecture` subclass registered with `@register`, the way llama.cpp's convert_hf_to_gguf.py
registers one class per model family; adding a family is one new module in this package.
4-bit types come from llama.cpp's own quantizer (through llama-cpp-python).
"""

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from meshtune.errors import MeshtuneError
from meshtune.files import atomic, read_json, temp_path

WRITER_QUANTS = ("F32", "F16", "BF16", "Q8_0")  # written here with the gguf package
LLAMA_CPP_QUANTS = {"Q4_0": 2, "Q4_K_M": 15}  # llama_ftype, made by llama.cpp's quantizer
QUANTS = (*WRITER_QUANTS, *LLAMA_CPP_QUANTS)


class Architecture:
    """One model family's part of the conversion; the skeleton (`write_gguf`) calls the hooks
    in its order."""

    model_type: ClassVar[str]  # config.json's model_type
    hf_class: ClassVar[str]  # config.json's architectures entry
    supported: ClassVar[str]  # how error messages name it
    gguf_arch: ClassVar[str]  # the gguf package's MODEL_ARCH member name

    def __init__(self, merged: Path, config: dict[str, Any], tokenizer: Any):
        self.merged, self.config, self.tokenizer = merged, config, tokenizer

    def set_gguf_parameters(self, writer: Any) -> None:
        """The hyper-parameters."""
        raise NotImplementedError

    def set_vocab(self, writer: Any) -> None:
        """The tokenizer: tokens, merges, special ids, chat template."""
        raise NotImplementedError

    def skip(self, hf_name: str) -> bool:
        """Tensors the GGUF does not carry (llama.cpp recomputes or reuses them)."""
        if hf_name == "lm_head.weight" and self.config.get("tie_word_embeddings"):
            return True  # tied: llama.cpp reuses token_embd
        return hf_name.endswith("rotary_emb.inv_freq")  # recomputed (older checkpoints saved it)

    def modify_tensor(self, hf_name: str, data: Any) -> Any:
        """A tensor's data as llama.cpp lays it out."""
        return data

    def extra_tensors(self) -> list[tuple[str, Any]]:
        """Float32 tensors the GGUF carries beyond the checkpoint's (name, array)."""
        return []


_ARCHITECTURES: list[type[Architecture]] = []


def register(cls: type[Architecture]) -> type[Architecture]:
    _ARCHITECTURES.append(cls)
    return cls


def supported() -> str:
    return "; ".join(a.supported for a in _ARCHITECTURES)


def architecture(config: dict[str, Any], where: str) -> type[Architecture]:
    """The registered class that converts this config's model, else a one-line error."""
    archs = config.get("architectures") or []
    for cls in _ARCHITECTURES:
        if config.get("model_type") == cls.model_type and cls.hf_class in archs:
            return cls
    found = ", ".join(archs) or config.get("model_type") or "unknown"
    raise MeshtuneError(
        f"{where}: architecture {found} cannot be exported; supported: {supported()}"
    )


def write_gguf(merged: Path, out: Path, quant: str, name: str, tokenizer: Any = None) -> None:
    """Write `merged` as a GGUF of type `quant` (atomically); `tokenizer` is merged/'s, when
    the caller has it loaded already."""
    if quant not in QUANTS:
        raise MeshtuneError(f"--quant {quant}: not offered; choose one of {', '.join(QUANTS)}")
    with atomic(out, hidden=False, fix="check the disk and folder") as tmp:
        if quant in WRITER_QUANTS:
            _write(merged, tmp, quant, name, tokenizer)
        else:  # llama.cpp quantizes from an exact F32 file
            f32 = temp_path(out.with_name(out.name + ".f32"), hidden=False)
            try:
                _write(merged, f32, "F32", name, tokenizer)
                _llama_cpp_quantize(f32, tmp, LLAMA_CPP_QUANTS[quant])
            finally:
                f32.unlink(missing_ok=True)


def _write(merged: Path, out: Path, quant: str, name: str, tokenizer: Any) -> None:
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoTokenizer

    config = read_json(merged / "config.json", "re-run export")
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(merged)
    arch = architecture(config, str(merged))(merged, config, tokenizer)
    model_arch = gguf.MODEL_ARCH[arch.gguf_arch]
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[model_arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(
        {
            "F32": gguf.LlamaFileType.ALL_F32,
            "F16": gguf.LlamaFileType.MOSTLY_F16,
            "BF16": gguf.LlamaFileType.MOSTLY_BF16,
            "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[quant]
    )
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    arch.set_gguf_parameters(writer)
    arch.set_vocab(writer)
    # Tensor infos first (shapes and byte sizes), then the data one tensor at a time, so memory
    # holds one tensor, not the model.
    plan = _tensor_plan(arch, model_arch, quant)
    extra = arch.extra_tensors()
    for _, new, _, shape, qtype in plan:
        nbytes = math.prod(gguf.quant_shape_to_byte_shape(shape, qtype))
        writer.add_tensor_info(new, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    for new, data in extra:
        writer.add_tensor_info(
            new, data.shape, data.dtype, data.nbytes, raw_dtype=gguf.GGMLQuantizationType.F32
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for hf_name, _, path, _, qtype in plan:
        with safe_open(path, framework="numpy") as f:
            data = arch.modify_tensor(hf_name, f.get_tensor(hf_name).astype("float32"))
        writer.write_tensor_data(gguf.quants.quantize(data, qtype))
    for _, data in extra:
        writer.write_tensor_data(data)
    writer.close()


def _tensor_plan(arch: Architecture, model_arch: Any, quant: str) -> list[tuple]:
    """(hf name, gguf name, file, shape, type) of every tensor the GGUF carries."""
    import gguf
    from safetensors import safe_open

    names = gguf.get_tensor_name_map(model_arch, arch.config["num_hidden_layers"])
    plan = []
    for path in sorted(arch.merged.glob("*.safetensors")):
        with safe_open(path, framework="numpy") as f:
            for hf_name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if arch.skip(hf_name):
                    continue
                new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if new is None:
                    raise MeshtuneError(
                        f"{arch.merged}: tensor {hf_name} has no llama.cpp name; "
                        f"supported: {supported()}"
                    )
                shape = list(f.get_slice(hf_name).get_shape())
                plan.append((hf_name, new, path, shape, _tensor_type(new, shape, quant)))
    return plan


def _tensor_type(gguf_name: str, shape: Sequence[int], quant: str) -> Any:
    """convert_hf_to_gguf's rule: 1-D tensors and norms stay F32; a row that does not split
    into whole quantization blocks falls back to F16."""
    import gguf

    t = gguf.GGMLQuantizationType
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return t.F32
    qtype = {"F32": t.F32, "F16": t.F16, "BF16": t.BF16, "Q8_0": t.Q8_0}[quant]
    if qtype == t.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0]:
        return t.F16
    return qtype


def _llama_cpp_quantize(src: Path, out: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        raise MeshtuneError("llama.cpp could not quantize the model; try --quant Q8_0")
