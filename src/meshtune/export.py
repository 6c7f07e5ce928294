"""Export: turn a training run into what the Pi needs, and prove it before saying done.

    RUN/merged/          the adapter merged into float32 base weights (a Hugging Face folder)
    RUN/<name>-Q8_0.gguf the merged model for llama.cpp / Ollama
    RUN/Modelfile        FROM ./<gguf>, the chat family's TEMPLATE and stops, SYSTEM, sampling
    RUN/DEPLOY.md        the ollama create command and the Mesh Master config change
    RUN/export.json      what was written, with time and peak memory
    RUN/verify.json      the proof (`verify`): metadata, tokens, TEMPLATE, logits, stopping

The GGUF is written with the `gguf` package from the merged folder, the way llama.cpp's
convert_hf_to_gguf.py does for the llama architecture: tensors renamed to llama.cpp's names,
q/k re-permuted into llama.cpp's rotary layout, norms in F32, and the tokenizer's vocabulary,
merges and chat template copied, with eos/eot set to the family's end-of-turn token.
4-bit types come from llama.cpp's own quantizer (through llama-cpp-python).
"""

import contextlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import yaml

from meshtune import chat, modelfile
from meshtune.errors import MeshtuneError
from meshtune.files import (
    check_writable,
    read_json,
    real_path,
    remove_stale_temps,
    temp_path,
    unique_backup,
    write_json,
    write_text,
)
from meshtune.meshmaster import DEFAULT_SYSTEM_PROMPT, OPTIONS, build_prompt

SUPPORTED = "llama (SmolLM2, Llama-3.x)"
# llama.cpp's threads spin while they wait, so on a busy machine every extra thread costs more
# than it brings: on this 2-core machine with another job running, 150 prompt tokens took 7.8 s
# on llama-cpp-python's default of all cores for batches, 0.4 s on one. Half the cores is also
# what Mesh Master gives Ollama (num_thread).
THREADS = max(1, (os.cpu_count() or 2) // 2)
WRITER_QUANTS = ("F32", "F16", "BF16", "Q8_0")  # written here with the gguf package
LLAMA_CPP_QUANTS = {"Q4_0": 2, "Q4_K_M": 15}  # llama_ftype, made by llama.cpp's quantizer
QUANTS = (*WRITER_QUANTS, *LLAMA_CPP_QUANTS)
REPLY_POSITIONS = 48  # greedy reply tokens per quick prompt whose logits are compared

# The proof's logit bounds. For each type, the largest |logit difference| llama.cpp on the GGUF
# may show against transformers on merged/ (over every position compared), with headroom over
# what SmolLM2-135M runs measured (README "Export": F32 1e-4, F16 0.07, BF16 0.40, Q8_0
# 1.7-2.4 over five adapters, Q4_0 16.7, Q4_K_M 6.9). Every type must also agree on the top-1
# token at 99% of the reply positions. A position where llama.cpp picks a token that
# transformers scores within TIE logits of its own top token is a near-tie, decided by rounding
# (8-bit rounding moves single logits by up to 1.7-2.4), and counts as agreement; the strict
# figure is reported beside it. On the five Q8_0 runs 3-8 of ~150 reply positions were near-ties
# (margins up to 1.03) and none was more. 4-bit types change what a 135M model says far more
# (strict agreement 79% for Q4_0, 88% for Q4_K_M): Q4_0 fails the proof, Q4_K_M passes at
# 99.3%; that is the finding, not a flaw of the proof.
MIN_TOP1 = 0.99
TIE = 1.5
LOGIT_BOUNDS: dict[str, float] = {
    "F32": 0.01,
    "F16": 0.2,
    "BF16": 1.0,
    "Q8_0": 4.0,
    "Q4_0": 30.0,
    "Q4_K_M": 15.0,
}


# ---------------------------------------------------------------------------------------------
# The run directory


@dataclass(frozen=True, slots=True)
class Run:
    dir: Path
    base_model: str
    adapter: Path
    family: str | None  # as train recorded it
    system_prompt: str
    ollama: dict[str, Any]  # Modelfile PARAMETERs: the v2 defaults, then the recipe's


def load_run(run_dir: str | Path) -> Run:
    folder = Path(run_dir)
    if not folder.is_dir():
        raise MeshtuneError(
            f"{folder}: no such run directory; pass the folder `meshtune train` wrote"
        )
    summary = read_json(folder / "train_summary.json", "run `meshtune train` first")
    recipe = _read_yaml(folder / "recipe.yaml")
    base = summary.get("base_model") or recipe.get("base_model")
    if not base:
        raise MeshtuneError(f"{folder}/train_summary.json: no base_model; re-run training")
    adapter = folder / str(summary.get("best_adapter") or "best")
    if not (adapter / "adapter_config.json").is_file():
        adapter = folder / "adapter"
    if not (adapter / "adapter_config.json").is_file():
        raise MeshtuneError(
            f"{folder}: no LoRA adapter (best/ or adapter/ with adapter_config.json); "
            "the training run did not finish"
        )
    check_adapter(adapter)
    overrides = recipe.get("ollama") or {}
    if not isinstance(overrides, dict):
        raise MeshtuneError(f"{folder}/recipe.yaml: `ollama:` must map PARAMETER names to values")
    ollama = {**modelfile.DEFAULT_PARAMETERS, **overrides}
    return Run(
        dir=folder,
        base_model=str(base),
        adapter=adapter,
        family=summary.get("family"),
        system_prompt=summary.get("system_prompt")
        or recipe.get("system_prompt")
        or DEFAULT_SYSTEM_PROMPT,
        ollama=ollama,
    )


def check_adapter(folder: Path) -> None:
    """A LoRA adapter folder peft can load: its config a LoRA config, its weights complete.
    Checked before anything is written, so a damaged adapter is named, not a traceback."""
    from meshtune.models import check_safetensors

    fix = "the adapter is damaged: re-run training, or export another run"
    config = read_json(folder / "adapter_config.json", fix)
    if config.get("peft_type") != "LORA" or not isinstance(config.get("r"), int):
        raise MeshtuneError(
            f"{folder}/adapter_config.json: not a LoRA adapter config (peft_type LORA and r); {fix}"
        )
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        raise MeshtuneError(f"{folder}: no adapter_model.safetensors; {fix}")
    check_safetensors(weights)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise MeshtuneError(
            f"{path}: unreadable ({str(e).splitlines()[0]}); fix or re-train"
        ) from e
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _torch_threads() -> Iterator[None]:
    """torch on THREADS threads for a while: its OpenMP threads spin as llama.cpp's do (on a
    busy 2-core machine the LoRA merge took 6.3 s on two threads, 0.9 s on one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------------------------------------
# Merge


def check_architecture(config: dict[str, Any], where: str) -> None:
    archs = config.get("architectures") or []
    if config.get("model_type") != "llama" or "LlamaForCausalLM" not in archs:
        found = ", ".join(archs) or config.get("model_type") or "unknown"
        raise MeshtuneError(
            f"{where}: architecture {found} cannot be exported; supported: {SUPPORTED}"
        )


def merge(run: Run, out: Path) -> None:
    """The adapter merged into float32 base weights, saved with the tokenizer (chat template
    included) as a Hugging Face folder. Merging onto full precision, never onto a 4-bit base,
    keeps conversion sound (llama.cpp#12923)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from meshtune.models import resolve

    base = resolve(run.base_model)
    check_architecture(read_json(base.folder / "config.json", "fix the base model"), run.base_model)
    has_tokenizer = (run.adapter / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(run.adapter if has_tokenizer else base.folder)
    family = chat.family_of(tokenizer)
    if run.family and run.family != family.name:
        raise MeshtuneError(
            f"{run.dir}/train_summary.json: trained as {run.family}, but the tokenizer's chat "
            f"template is {family.name}; export from the tokenizer the run used"
        )
    with _torch_threads(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers API
        model = AutoModelForCausalLM.from_pretrained(base.folder, dtype=torch.float32)
        try:
            model = PeftModel.from_pretrained(model, run.adapter).merge_and_unload()
        except (ValueError, RuntimeError, KeyError) as e:  # an adapter for another model
            first = str(e).splitlines()[0][:160]
            raise MeshtuneError(
                f"{run.adapter}: the adapter does not fit {run.base_model} ({first}); export "
                "with the base model the run trained"
            ) from e
    tmp = temp_path(out, hidden=False)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        del model
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    except OSError as e:
        raise MeshtuneError(f"{out}: cannot write ({e.strerror}); check the disk and folder") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# GGUF


def write_gguf(merged: Path, out: Path, quant: str, name: str) -> None:
    """Write `merged` as a GGUF of type `quant` (atomically)."""
    if quant not in QUANTS:
        raise MeshtuneError(f"--quant {quant}: not offered; choose one of {', '.join(QUANTS)}")
    tmp = temp_path(out, hidden=False)
    try:
        if quant in WRITER_QUANTS:
            _write_gguf(merged, tmp, quant, name)
        else:  # llama.cpp quantizes from an exact F32 file
            f32 = temp_path(out.with_name(out.name + ".f32"), hidden=False)
            try:
                _write_gguf(merged, f32, "F32", name)
                _llama_cpp_quantize(f32, tmp, LLAMA_CPP_QUANTS[quant])
            finally:
                f32.unlink(missing_ok=True)
        os.replace(tmp, out)
    except OSError as e:
        raise MeshtuneError(f"{out}: cannot write ({e.strerror}); check the disk and folder") from e
    finally:
        tmp.unlink(missing_ok=True)


def _write_gguf(merged: Path, out: Path, quant: str, name: str) -> None:
    import gguf
    import numpy as np
    from safetensors import safe_open
    from transformers import AutoTokenizer

    config = read_json(merged / "config.json", "re-run export")
    check_architecture(config, str(merged))
    tokenizer = AutoTokenizer.from_pretrained(merged)
    writer = gguf.GGUFWriter(out, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
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
    rope_freqs = _add_hparams(writer, config)
    _add_tokenizer(writer, tokenizer, config["vocab_size"], merged)

    # Tensor infos first (shapes and byte sizes), then the data one tensor at a time, so memory
    # holds one tensor, not the model.
    files = sorted(merged.glob("*.safetensors"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    plan: list[tuple[str, str, Path, list[int], Any]] = []  # hf name, gguf name, file, shape, type
    for path in files:
        with safe_open(path, framework="numpy") as f:
            for hf_name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                if hf_name == "lm_head.weight" and config.get("tie_word_embeddings"):
                    continue  # tied: llama.cpp reuses token_embd (SmolLM2 has no output.weight)
                if hf_name.endswith("rotary_emb.inv_freq"):
                    continue  # recomputed by llama.cpp (older checkpoints saved it)
                new = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
                if new is None:
                    raise MeshtuneError(
                        f"{merged}: tensor {hf_name} has no llama.cpp name; supported: {SUPPORTED}"
                    )
                shape = list(f.get_slice(hf_name).get_shape())
                plan.append((hf_name, new, path, shape, _tensor_type(new, shape, quant)))
    for _, new, _, shape, qtype in plan:
        nbytes = math.prod(gguf.quant_shape_to_byte_shape(shape, qtype))
        writer.add_tensor_info(new, shape, np.dtype(np.float32), nbytes, raw_dtype=qtype)
    if rope_freqs is not None:
        writer.add_tensor_info(
            gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight",
            rope_freqs.shape,
            rope_freqs.dtype,
            rope_freqs.nbytes,
            raw_dtype=gguf.GGMLQuantizationType.F32,
        )
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", heads)
    for hf_name, _, path, _, qtype in plan:
        with safe_open(path, framework="numpy") as f:
            data = f.get_tensor(hf_name).astype("float32")
        # transformers un-permutes q/k when it reads a llama GGUF; put llama.cpp's rotary layout
        # back (k with the KV-head count), or the model is broken (stack.md: 55% agreement).
        if re.search(r"self_attn\.q_proj\.(weight|bias)$", hf_name):
            data = _permute(data, heads)
        elif re.search(r"self_attn\.k_proj\.(weight|bias)$", hf_name):
            data = _permute(data, kv_heads)
        writer.write_tensor_data(gguf.quants.quantize(data, qtype))
    if rope_freqs is not None:
        writer.write_tensor_data(rope_freqs)
    writer.close()


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


def _permute(w: Any, n_head: int) -> Any:
    """llama.cpp's rotary layout for q/k rows (convert_hf_to_gguf's LlamaModel.permute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _add_hparams(writer: Any, config: dict[str, Any]) -> Any:
    """The llama hyper-parameters; returns the rope_freqs tensor for Llama-3.1/3.2 rope
    scaling (None otherwise)."""
    import gguf
    import numpy as np

    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads", heads))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config["hidden_size"] // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    # transformers 5 writes rope_parameters; older configs rope_theta + rope_scaling.
    rope = dict(config.get("rope_parameters") or {})
    if not rope:
        rope = dict(config.get("rope_scaling") or {})
        rope.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
    kind = (rope.get("rope_type") or rope.get("type") or "default").lower()
    if kind == "default":
        return None
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
        return None
    if kind == "llama3":  # per-frequency factors, as convert_hf_to_gguf computes them
        base, factor = rope.get("rope_theta", 10000.0), rope.get("factor", 8.0)
        low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
        old_ctx = rope.get("original_max_position_embeddings", 8192)
        freqs = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        factors = []
        for freq in freqs:
            wavelen = 2 * math.pi / freq
            if wavelen < old_ctx / high:
                factors.append(1.0)
            elif wavelen > old_ctx / low:
                factors.append(factor)
            else:
                smooth = (old_ctx / wavelen - low) / (high - low)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        return np.array(factors, dtype=np.float32)
    raise MeshtuneError(f"rope scaling {kind!r} is not supported by meshtune's export")


# llama.cpp picks its pre-tokenizer (how text is split before BPE) by the hash of the token ids
# of this text (convert_hf_to_gguf.py, get_vocab_base_pre); these are the llama-family
# tokenizers meshtune exports.
_CHKTXT = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis "
    "concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 "
    "កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български "
    "''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? "
    "'M not sure I'll make it, 'D you like some tea? We'Ve a'lL"
)
_PRE_TOKENIZERS = {
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",
}


def _pre_tokenizer(tokenizer: Any, where: Path) -> str:
    # Hash with and without special tokens, so a BOS-adding variant of a known tokenizer
    # (the same splitting) is recognised too.
    for ids in (tokenizer.encode(_CHKTXT), tokenizer.encode(_CHKTXT, add_special_tokens=False)):
        pre = _PRE_TOKENIZERS.get(sha256(str(ids).encode()).hexdigest())
        if pre:
            return pre
    raise MeshtuneError(
        f"{where}: the tokenizer is not one llama.cpp can reproduce here (known: SmolLM2's "
        f"and Llama-3's BPE tokenizers); supported: {SUPPORTED}"
    )


def _add_tokenizer(writer: Any, tokenizer: Any, vocab_size: int, merged: Path) -> None:
    import gguf

    tokenizer_json = read_json(merged / "tokenizer.json", "re-run export")
    if (tokenizer_json.get("model") or {}).get("type") != "BPE":
        raise MeshtuneError(f"{merged}: not a BPE tokenizer; supported: {SUPPORTED}")
    vocab = {i: t for t, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in vocab:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(vocab[i])
            types.append(
                gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(vocab[i])
            types.append(gguf.TokenType.NORMAL)
    family = chat.family_of(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer, merged))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(gguf.SpecialVocab(merged, load_merges=True).merges)
    if tokenizer.bos_token_id is not None:
        writer.add_bos_token_id(tokenizer.bos_token_id)
    # The token the model ends its turns with, as eos and eot: llama.cpp and Ollama stop there
    # (a Llama-3 GGUF with eos <|end_of_text|> runs on: unsloth#468).
    writer.add_eos_token_id(eot)
    writer.add_eot_token_id(eot)
    if tokenizer.unk_token_id is not None:
        writer.add_unk_token_id(tokenizer.unk_token_id)
    if tokenizer.pad_token_id is not None:
        writer.add_pad_token_id(tokenizer.pad_token_id)
    writer.add_add_bos_token(modelfile.adds_bos(tokenizer))
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)


def _llama_cpp_quantize(src: Path, out: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), params) != 0:
        raise MeshtuneError("llama.cpp could not quantize the model; try --quant Q8_0")


# ---------------------------------------------------------------------------------------------
# Export


@dataclass(slots=True)
class Exported:
    run: str
    name: str
    quant: str
    gguf: str  # file name, beside the Modelfile
    gguf_bytes: int
    merged_bytes: int
    family: str
    seconds: float = 0.0
    stages: dict[str, float] = field(default_factory=dict)  # seconds per stage
    peak_rss_bytes: int = 0
    verified: bool = False


def default_name(run_dir: Path) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", run_dir.resolve().name.lower()).strip("-._")
    return name or "mesh-master-bot"


def check_name(name: str) -> str:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{0,63}", name):
        raise MeshtuneError(
            f"--name {name!r}: use lower-case letters, digits, '.', '_' and '-' (an Ollama model "
            "name and a file name)"
        )
    return name


def export(
    run_dir: str | Path,
    quant: str = "Q8_0",
    name: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Exported, "Verification"]:
    """Merge, write the GGUF, Modelfile and DEPLOY.md, then verify them all."""
    started = time.perf_counter()
    quant = quant.upper()
    if quant not in QUANTS:
        raise MeshtuneError(f"--quant {quant}: not offered; choose one of {', '.join(QUANTS)}")
    if name is not None:
        check_name(name)
    run = load_run(run_dir)
    name = check_name(name or default_name(run.dir))
    modelfile.check_parameters(run.ollama, f"{run.dir}/recipe.yaml: ollama")  # before the slow part
    from meshtune.models import resolve

    resolve(run.base_model)  # readable, before anything is written
    remove_stale_temps(run.dir)  # left by an export that was killed
    merged = run.dir / "merged"
    stages: dict[str, float] = {}
    progress(f"merging {run.adapter} into {run.base_model}")
    merge(run, merged)
    stages["merge"] = round(time.perf_counter() - started, 1)
    gguf_name = f"{name}-{quant}.gguf"
    progress(f"writing {gguf_name}")
    write_gguf(merged, run.dir / gguf_name, quant, name)
    stages["gguf"] = round(time.perf_counter() - started - sum(stages.values()), 1)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(merged)
    family = chat.family_of(tokenizer)
    text = modelfile.build(
        gguf_name=gguf_name,
        template=modelfile.template_for(tokenizer),
        system=run.system_prompt,
        parameters=run.ollama,
        stops=family.stops,
        header=(
            f"Ollama Modelfile for {name}, written by `meshtune export` from {run.dir.name}.\n"
            f"Base {run.base_model}, chat family {family.name}, GGUF type {quant}.\n"
            f"On the Pi, in this folder: ollama create {name} -f Modelfile"
        ),
    )
    write_text(run.dir / "Modelfile", text)
    info = Exported(
        run=str(run.dir),
        name=name,
        quant=quant,
        gguf=gguf_name,
        gguf_bytes=(run.dir / gguf_name).stat().st_size,
        merged_bytes=sum(p.stat().st_size for p in merged.glob("*.safetensors")),
        family=family.name,
    )
    write_json(run.dir / "export.json", asdict(info))
    progress("verifying")
    verification = verify(run.dir)
    info.verified = verification.ok
    info.seconds = round(time.perf_counter() - started, 1)
    stages["verify"] = round(info.seconds - sum(stages.values()), 1)
    info.stages = stages
    info.peak_rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    write_text(run.dir / "DEPLOY.md", deploy_note(info, verification))
    write_json(run.dir / "export.json", asdict(info))
    return info, verification


def deploy_note(info: Exported, verification: "Verification") -> str:
    status = "passed" if verification.ok else "FAILED (do not deploy; see verify.json)"
    opts = ", ".join(f"{k} {v}" for k, v in OPTIONS.items())
    checks = "\n".join(f"- {c.name}: {c.status}, {c.detail}" for c in verification.checks)
    return f"""# Deploying {info.name}

Written by `meshtune export` on {datetime.now(UTC):%Y-%m-%d}: `{info.gguf}`
({info.gguf_bytes / 1e6:.1f} MB, {info.quant}, chat family {info.family}) and `Modelfile`.
Verification {status}:

{checks}

## 1. Copy both files to the Pi, into one folder

    scp {info.gguf} Modelfile pi@<your-pi>:~/{info.name}/

## 2. Create the Ollama model (in that folder: FROM is relative to the Modelfile)

    ollama create {info.name} -f Modelfile

## 3. Point Mesh Master at it

In Mesh Master's `config.json`, change one key and restart the bot (the guide's service:
`sudo systemctl restart mesh-ai`):

    "ollama_model": "{info.name}",

On a machine with both meshtune and Ollama, steps 2 and 3 are one command (it keeps a backup
of config.json):

    meshtune deploy {info.run} --name {info.name} --mesh-master-config config.json

## Mesh Master's options override the Modelfile

Mesh Master sends its own options with every request, and Ollama uses them instead of the
Modelfile's PARAMETER values:

    {opts}, num_ctx from its ollama_num_ctx

The Modelfile's sampling values apply only to clients that send none (`ollama run`, other
tools); its TEMPLATE, SYSTEM and stop tokens always apply. Judge the model under the bot's
values: `meshtune eval {info.run} --profile meshmaster`.
"""


# ---------------------------------------------------------------------------------------------
# Verify


@dataclass(slots=True)
class Check:
    name: str
    ok: bool | None  # None: not run (a tool is missing)
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> str:
        return {True: "ok", False: "FAIL", None: "skipped"}[self.ok]


@dataclass(slots=True)
class Verification:
    gguf: str
    quant: str
    checks: list[Check]
    # the exact file proved: deploy ships nothing else
    sha256: str = ""
    bytes: int = 0

    @property
    def ok(self) -> bool:
        return all(c.ok is not False for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        checks = [asdict(c) for c in self.checks]
        return {
            "gguf": self.gguf,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "quant": self.quant,
            "ok": self.ok,
            "checks": checks,
        }


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, read in blocks (a GGUF can be gigabytes)."""
    h = sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read ({e.strerror}); re-run export") from e
    return h.hexdigest(), path.stat().st_size


def quick_prompts() -> list[str]:
    """The v2 guide's four test prompts (the evaluation package's `quick` suite)."""
    from meshtune.evaluate.suite import load_suite

    return [item.question for item in load_suite("quick").items]


def verification_chats(system: str) -> list[list[dict[str, str]]]:
    """Every chat the proof runs on, as Ollama hands them to TEMPLATE: the quick prompts asked
    directly and in Mesh Master's prompt shape, and modelfile's proof conversations."""
    chats = [(chat.Message("user", q),) for q in quick_prompts()]
    chats += [(chat.Message("user", build_prompt(q)),) for q in quick_prompts()]
    chats += list(modelfile.PROOF_CONVERSATIONS)
    return [modelfile.ollama_messages(c, system) for c in chats]


def verify(run_dir: str | Path) -> Verification:
    """Prove the exported files: llama.cpp runs the GGUF like transformers runs merged/, sees
    the same tokens, Ollama's TEMPLATE renders the trained prompt, and greedy replies stop."""
    from transformers import AutoTokenizer

    folder = Path(run_dir)
    exported = read_json(folder / "export.json", "run `meshtune export` first")
    mf = modelfile.read(folder / "Modelfile")
    gguf_path = folder / exported["gguf"]
    merged = folder / "merged"
    if not gguf_path.is_file() or not (merged / "config.json").is_file():
        raise MeshtuneError(f"{folder}: {exported['gguf']} or merged/ is missing; re-run export")
    digest, size = file_digest(gguf_path)
    proved_stat = gguf_path.stat()
    system = mf.first("system").args if mf.first("system") else None
    template = mf.first("template").args if mf.first("template") else ""
    # A reply must end before the bot's own limit (Mesh Master sends num_predict 80), and before
    # the Modelfile's when that is lower.
    num_predict = int(next((p.args for p in mf.parameters if p.name == "num_predict"), 10**6))
    limit = min(num_predict, OPTIONS["num_predict"])

    tokenizer = AutoTokenizer.from_pretrained(merged)
    family = chat.family_of(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(family.end_of_turn)
    chats = verification_chats(system or "")
    hf_texts = [chat.render(tokenizer, [chat.Message(**m) for m in c], True) for c in chats]
    hf_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in hf_texts]
    quick = len(quick_prompts())  # the first chats: the quick prompts asked directly

    # Stopping as deployed: llama.cpp's default settings, as Ollama runs it.
    n_ctx = max(map(len, hf_ids[:quick])) + limit + 8
    llm = _llama(gguf_path, n_ctx=n_ctx)
    stops = _check_stops(llm, tokenizer, chats[:quick], hf_ids[:quick], eot, limit)
    del llm
    # Logits on every chat, the quick prompts with their greedy replies (where top-1 decides
    # what the bot says).
    replies = [r["ids"][:REPLY_POSITIONS] for r in stops.data["replies"]]
    sequences = [ids + r for ids, r in zip(hf_ids[:quick], replies, strict=True)]
    sequences += hf_ids[quick:]
    prompt_lengths = [len(ids) for ids in hf_ids]
    with tempfile.TemporaryDirectory() as tmp:
        # transformers first, its logits parked on disk, so the merged model and the GGUF are
        # never in memory together.
        reference = _transformers_logits(merged, sequences, Path(tmp))
        # The file against merged/: a float32 KV cache, so the comparison measures the GGUF's
        # weights, not llama.cpp's default f16 cache.
        llm = _llama(
            gguf_path,
            n_ctx=max(map(len, sequences + hf_ids)) + 8,
            n_batch=128,  # bounds the logits buffer
            logits_all=True,
            type_k=0,  # GGML_TYPE_F32
            type_v=0,
        )
        checks = [
            _check_metadata(llm, tokenizer, family, eot),
            _check_tokens(llm, tokenizer, hf_texts, hf_ids),
            _check_template(llm, template, chats, hf_ids),
            _check_logits(llm, reference, sequences, prompt_lengths, exported["quant"]),
        ]
        del llm
    checks.append(stops)
    findings = modelfile.check(folder / "Modelfile", gguf_path)
    errors = [f for f in findings if f.severity == "error"]
    checks.append(
        Check(
            "modelfile",
            not errors,
            f"{len(errors)} errors, {len(findings) - len(errors)} warnings"
            + "".join(f"; {f.code} {f.message}" for f in findings),
            {"findings": [f.to_dict() for f in findings]},
        )
    )
    result = Verification(exported["gguf"], exported["quant"], checks, digest, size)
    now = gguf_path.stat()
    if (now.st_size, now.st_mtime_ns) != (proved_stat.st_size, proved_stat.st_mtime_ns):
        raise MeshtuneError(f"{gguf_path}: changed while it was verified; run verify again")
    write_json(folder / "verify.json", result.to_dict())
    return result


def _llama(path: Path, **options: Any) -> Any:
    from llama_cpp import Llama

    try:
        return Llama(
            str(path), n_threads=THREADS, n_threads_batch=THREADS, verbose=False, **options
        )
    except ValueError as e:
        raise MeshtuneError(f"{path}: llama.cpp cannot load it ({e}); re-run export") from e


def _check_metadata(llm: Any, tokenizer: Any, family: chat.ChatFamily, eot: int) -> Check:
    meta = llm.metadata
    problems = []
    if llm.token_eos() != eot:
        problems.append(f"eos is token {llm.token_eos()}, not {family.end_of_turn} ({eot})")
    if meta.get("tokenizer.ggml.eot_token_id") != str(eot):
        problems.append(f"eot is not {family.end_of_turn} ({eot})")
    add_bos = meta.get("tokenizer.ggml.add_bos_token") == "true"
    if add_bos != modelfile.adds_bos(tokenizer):
        problems.append(f"add_bos_token {add_bos} differs from the tokenizer's")
    if meta.get("tokenizer.chat_template") != tokenizer.chat_template:
        problems.append("the chat template differs from the tokenizer's")
    detail = "; ".join(problems) or (
        f"eos = eot = {family.end_of_turn} ({eot}), add_bos {str(add_bos).lower()}, "
        "chat template = the tokenizer's"
    )
    return Check("metadata", not problems, detail)


def _check_tokens(llm: Any, tokenizer: Any, texts: list[str], want: list[list[int]]) -> Check:
    """llama.cpp tokenizes each trained prompt to the trained ids, BOS handling included."""
    bos = tokenizer.bos_token if modelfile.adds_bos(tokenizer) else None
    bad = []
    for text, ids in zip(texts, want, strict=True):
        # The runtime adds BOS itself when the GGUF says so; the rendered text then has none.
        runtime_text = text.removeprefix(bos) if bos else text
        if llm.tokenize(runtime_text.encode(), add_bos=True, special=True) != ids:
            bad.append(text[:60])
    total = sum(map(len, want))
    detail = (
        f"{len(texts)} chats, {total} tokens identical to the Hugging Face tokenizer's"
        if not bad
        else f"{len(bad)} of {len(texts)} chats tokenize differently, e.g. {bad[0]!r}"
    )
    return Check("tokens", not bad, detail, {"chats": len(texts), "tokens": total})


def _check_template(llm: Any, template: str, chats: list, want: list[list[int]]) -> Check:
    """The Modelfile's TEMPLATE, rendered by Go's text/template the way Ollama does and
    tokenized by llama.cpp with the BOS it adds, gives the trained ids."""
    if not modelfile.go_available():
        return Check("template", None, "not checked: `go` is not installed (make go)")
    try:
        rendered = modelfile.render_go(template, chats)
    except MeshtuneError as e:
        return Check("template", False, str(e))
    bad = [
        i
        for i, (text, ids) in enumerate(zip(rendered, want, strict=True))
        if llm.tokenize(text.encode(), add_bos=True, special=True) != ids
    ]
    detail = (
        f"Go text/template renders the trained prompt for all {len(chats)} chats"
        if not bad
        else f"{len(bad)} of {len(chats)} chats render differently, e.g. {rendered[bad[0]]!r}"
    )
    return Check("template", not bad, detail, {"chats": len(chats)})


def _transformers_logits(merged: Path, sequences: list[list[int]], folder: Path) -> list[Path]:
    """The merged model's logits for each sequence, saved as .npy files in `folder`."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)
    paths = []
    with _torch_threads(), torch.no_grad():
        for i, ids in enumerate(sequences):
            paths.append(folder / f"{i}.npy")
            np.save(paths[-1], model(torch.tensor([ids])).logits[0].numpy())
    return paths


def _check_logits(
    llm: Any,
    reference: list[Path],
    sequences: list[list[int]],
    prompt_lengths: list[int],
    quant: str,
) -> Check:
    """llama.cpp's next-token logits against transformers' at every position. Top-1 agreement
    is counted where the model decides what it says (the last prompt position and the greedy
    reply's positions); the largest difference is taken everywhere."""
    import numpy as np

    max_diff, total_diff, positions = 0.0, 0.0, 0
    same, near_tie, decisions = 0, 0, 0
    for path, ids, prompt_len in zip(reference, sequences, prompt_lengths, strict=True):
        want = np.load(path)
        llm.reset()
        llm.eval(ids)
        got = np.asarray(llm.scores[: len(ids)])
        diff = np.abs(got - want)
        max_diff = max(max_diff, float(diff.max()))
        total_diff += float(diff.mean(-1).sum())
        positions += len(ids)
        # the positions that predict the first reply token and each one after it
        span = slice(prompt_len - 1, max(len(ids) - 1, prompt_len))
        hf_best, cpp_best = want[span].argmax(-1), got[span].argmax(-1)
        rows = np.arange(len(hf_best))
        # transformers' own margin between its choice and llama.cpp's
        margin = want[span][rows, hf_best] - want[span][rows, cpp_best]
        same += int((hf_best == cpp_best).sum())
        near_tie += int(((hf_best != cpp_best) & (margin < TIE)).sum())
        decisions += len(hf_best)
    bound, min_agree = LOGIT_BOUNDS[quant], MIN_TOP1
    strict, agree = same / decisions, (same + near_tie) / decisions
    ok = agree >= min_agree and max_diff <= bound
    detail = (
        f"top-1 agreement {agree:.1%} on {decisions} reply positions (needs {min_agree:.0%}; "
        f"{strict:.1%} counting {near_tie} near-ties as differences), max |logit diff| "
        f"{max_diff:.3g} over {positions} positions (bound {bound} for {quant}), "
        f"mean {total_diff / positions:.2g}"
    )
    data = {
        "top1_agreement": agree,
        "top1_strict": strict,
        "near_ties": near_tie,
        "decisions": decisions,
        "positions": positions,
        "max_abs_diff": max_diff,
        "mean_abs_diff": total_diff / positions,
        "bound": bound,
        "min_top1": min_agree,
        "tie": TIE,
    }
    return Check("logits", ok, detail, data)


def _check_stops(
    llm: Any, tokenizer: Any, chats: list, prompts: list[list[int]], eot: int, limit: int
) -> Check:
    """Greedy (no repeat penalty) generation ends with the end-of-turn token on every quick
    prompt within `limit` tokens."""
    import llama_cpp

    replies = []
    for c, ids in zip(chats, prompts, strict=True):
        out: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            out.append(token)
            # Ollama stops on any end-of-generation token; only the end-of-turn one counts here.
            if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token) or len(out) >= limit:
                break
        ended = out[-1] if out else None
        replies.append(
            {
                "prompt": c[-1]["content"],
                "reply": tokenizer.decode(out[:-1] if ended == eot else out),
                "ids": out,
                "stopped": ended == eot,
                "ended_with": tokenizer.decode([ended]) if ended is not None else "",
            }
        )
    failed = [r for r in replies if not r["stopped"]]
    eot_text = tokenizer.convert_ids_to_tokens(eot)
    detail = f"{len(replies) - len(failed)}/{len(replies)} quick prompts ended with {eot_text}"
    if failed:
        detail += "; did not: " + ", ".join(
            f"{r['prompt']!r} ({len(r['ids'])} tokens, ended with {r['ended_with']!r})"
            for r in failed
        )
    return Check("stops", not failed, detail, {"limit": limit, "replies": replies})


# ---------------------------------------------------------------------------------------------
# Deploy


@dataclass(slots=True)
class Deployed:
    command: list[str]
    ran: bool  # False: ollama is not on PATH, the command is printed instead
    config: str | None = None
    backup: str | None = None


def deploy(
    run_dir: str | Path, name: str, config: str | Path | None = None, force: bool = False
) -> Deployed:
    """`ollama create NAME -f Modelfile` (when ollama is on PATH) and Mesh Master's
    config.json pointed at NAME."""
    folder = Path(run_dir)
    name = check_name(name)
    mf_path, _ = proven_files(folder, force)
    # The config change is worked out and checked before ollama runs, so a config that cannot
    # be changed stops the deploy before anything changed.
    edit = plan_config_edit(Path(config), name) if config is not None else None
    command = ["ollama", "create", name, "-f", str(mf_path.resolve())]
    ollama = shutil.which("ollama")
    result = Deployed(command, ran=ollama is not None)
    if ollama:
        proc = subprocess.run(
            [ollama, *command[1:]], cwd=folder, capture_output=True, text=True, check=False
        )
        if proc.returncode:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
            raise MeshtuneError(f"ollama create failed (exit {proc.returncode}): {tail[0]}")
    if edit is not None:
        result.config = str(config)
        result.backup = str(apply_config_edit(edit))
    return result


def proven_files(folder: Path, force: bool) -> tuple[Path, Path]:
    """The run's Modelfile and the GGUF its FROM names, once verify.json proved that very file
    (check_proof) and passed; `force` ships a file whose proof failed, never an unproved one."""
    mf_path = folder / "Modelfile"
    if not mf_path.is_file():
        raise MeshtuneError(f"{folder}: no Modelfile; run `meshtune export {folder}` first")
    mf = modelfile.read(mf_path)
    verification = check_proof(folder, mf)
    if not verification.get("ok") and not force:
        failed = [c["name"] for c in verification.get("checks", []) if c.get("ok") is False]
        raise MeshtuneError(
            f"{folder}/verify.json: verification failed ({', '.join(failed)}); fix the run, or "
            "pass --force to deploy anyway"
        )
    return mf_path, modelfile.local_model(mf, folder)


def check_proof(folder: Path, mf: "modelfile.Modelfile") -> dict[str, Any]:
    """verify.json, if it proved the very file the Modelfile's FROM names (same path, sha256
    and size); anything else is refused, --force or not: an export stopped during its proof
    leaves the new GGUF beside the previous proof."""
    verification = read_json(folder / "verify.json", f"run `meshtune verify {folder}` first")
    again = f"run `meshtune verify {folder}` (or export again) before deploying"
    target = modelfile.local_model(mf, folder)
    if target is None or not target.is_file():
        raise MeshtuneError(
            f"{folder}/Modelfile: FROM does not name a GGUF file in the run; re-run export"
        )
    proved = verification.get("gguf")
    if not isinstance(proved, str) or not verification.get("sha256"):
        raise MeshtuneError(f"{folder}/verify.json: does not say which file it proved; {again}")
    if (folder / proved).resolve() != target.resolve():
        raise MeshtuneError(
            f"{folder}/verify.json: proved {proved}, but the Modelfile ships {target.name}; {again}"
        )
    digest, size = file_digest(target)
    if (digest, size) != (verification["sha256"], verification.get("bytes")):
        raise MeshtuneError(
            f"{target}: not the file verify.json proved (its sha256 or size differs: it changed "
            f"after verification, or an export stopped before its proof); {again}"
        )
    return verification


@dataclass(frozen=True, slots=True)
class ConfigEdit:
    path: Path  # the file itself (a symlink's target)
    text: str  # its new content


def set_ollama_model(path: Path, name: str) -> Path:
    """Set `ollama_model` in Mesh Master's config.json, changing nothing else (formatting
    included), after writing a backup beside it. Returns the backup's path."""
    return apply_config_edit(plan_config_edit(path, name))


def apply_config_edit(edit: ConfigEdit) -> Path:
    """A backup under a name of its own (the original ollama_model stays in it), then the new
    text, written beside the file and renamed over it."""
    backup = unique_backup(edit.path)
    write_text(edit.path, edit.text)
    return backup


def plan_config_edit(path: Path, name: str) -> ConfigEdit:
    """The new config.json text with only `ollama_model` changed; the file must be writable."""
    path = real_path(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except FileNotFoundError as e:
        raise MeshtuneError(f"{path}: no such file; pass Mesh Master's config.json") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MeshtuneError(f"{path}: not readable JSON ({e}); fix the file first") from e
    if not isinstance(data, dict):
        raise MeshtuneError(f"{path}: not a JSON object; pass Mesh Master's config.json")
    value = json.dumps(name)
    key = re.compile(r'("ollama_model"\s*:\s*)"(?:[^"\\]|\\.)*"')
    if "ollama_model" in data:
        new = key.sub(lambda m: m[1] + value, text, count=1)
    else:  # add it as the first key, indented like the others
        m = re.match(r'(\s*\{)(\s*)(?=")', text)
        if m:
            new = f'{m[1]}{m[2]}"ollama_model": {value},{m[2]}{text[m.end() :]}'
        else:
            new = re.sub(r"\{\s*\}", '{"ollama_model": ' + value + "}", text, count=1)
    if json.loads(new) != {**data, "ollama_model": name}:
        raise MeshtuneError(f"{path}: cannot change ollama_model safely; set it by hand")
    check_writable(path, "Mesh Master's config")
    return ConfigEdit(path, new)
