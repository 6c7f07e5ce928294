"""The proof (`meshtune verify`): llama.cpp runs the GGUF like transformers runs merged/, sees
the same tokens, Ollama's TEMPLATE renders the trained prompt, greedy replies stop, and the
Modelfile lints clean. Each check runs once; the result (RUN/verify.json) names the very file
proved, by sha256 and size, and deploy ships nothing else."""

import re
import tempfile
from dataclasses import dataclass
from hashlib import sha256
from pathlib import Path
from typing import Any

from meshtune import chat, ollama
from meshtune.errors import MeshtuneError
from meshtune.export import modelfile
from meshtune.export.merge import THREADS, torch_threads
from meshtune.files import input_file, read_json
from meshtune.meshmaster import OPTIONS, SHIPPED, build_prompt
from meshtune.meshmaster.truncation import ollama_cut
from meshtune.rundir import Check, ExportInfo, RunDir, Verification
from meshtune.suites import load_suite

REPLY_POSITIONS = 48  # greedy reply tokens per quick prompt whose logits are compared

# The proof's logit bounds. For each type, the largest |logit difference| llama.cpp on the GGUF
# may show against transformers on merged/ (over every position compared), with headroom over
# what SmolLM2-135M runs measured (README "Export"; benchmarks/export_quants.py measures them).
# Every type must also agree on the top-1 token at MIN_TOP1 of the reply positions. A position
# where llama.cpp picks a token that transformers scores within TIE logits of its own top token
# is a near-tie, decided by rounding, and counts as agreement; the strict figure is reported
# beside it. 4-bit types change what a 135M model says far more than 8-bit ones, so some fail
# the proof: that is the finding, not a flaw of the proof.
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


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, read in blocks (a GGUF can be gigabytes)."""
    h = sha256()
    input_file(path)
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    except OSError as e:
        raise MeshtuneError(f"{path}: cannot read ({e.strerror}); re-run export") from e
    return h.hexdigest(), path.stat().st_size


def quick_prompts() -> list[str]:
    """The v2 guide's four test prompts (the evaluation package's `quick` suite)."""
    return [item.question for item in load_suite("quick").items]


def verification_chats(system: str) -> list[list[dict[str, str]]]:
    """Every chat the proof runs on, as Ollama hands them to TEMPLATE: the quick prompts asked
    directly and in Mesh Master's prompt shape, and modelfile's proof conversations."""
    chats = [(chat.Message("user", q),) for q in quick_prompts()]
    chats += [(chat.Message("user", build_prompt(q)),) for q in quick_prompts()]
    chats += list(modelfile.PROOF_CONVERSATIONS)
    return [modelfile.ollama_messages(c, system) for c in chats]


@dataclass(frozen=True, slots=True)
class _Chats:
    """What the checks run on: every proof chat as Ollama hands it to TEMPLATE, rendered and
    tokenized by the model's own tokenizer; the first `quick` are the quick prompts."""

    chats: list[list[dict[str, str]]]
    texts: list[str]
    ids: list[list[int]]
    quick: int
    eot: int
    limit: int  # the most tokens a reply may take

    @classmethod
    def of(cls, mf: ollama.Modelfile, tokenizer: Any) -> "_Chats":
        system = mf.first("system")
        chats = verification_chats(system.args if system else "")
        texts = [chat.render(tokenizer, [chat.Message(**m) for m in c], True) for c in chats]
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        # A reply must end before the bot's own limit (Mesh Master sends num_predict 80), and
        # before the Modelfile's when that is lower.
        # (a num_predict Ollama would reject is the modelfile check's finding, not a crash here)
        num_predict = next((p.args for p in mf.parameters if p.name == "num_predict"), "")
        limit = int(num_predict) if re.fullmatch(r"\s*-?\d+\s*", num_predict) else 10**6
        eot = tokenizer.convert_tokens_to_ids(chat.family_of(tokenizer).end_of_turn)
        quick = len(quick_prompts())
        return cls(chats, texts, ids, quick, eot, min(limit, OPTIONS["num_predict"]))


def verify(
    run_dir: str | Path, exported: ExportInfo | None = None, tokenizer: Any = None
) -> Verification:
    """Prove the exported files (export passes what it wrote and the tokenizer it used; alone,
    verify reads them from the run directory)."""
    run = RunDir(Path(run_dir))
    exported = exported or run.load_export()
    if exported.quant not in LOGIT_BOUNDS:
        raise MeshtuneError(
            f"{run.export_info}: `quant` {exported.quant!r} is not a type meshtune exports "
            f"({', '.join(LOGIT_BOUNDS)}); re-run `meshtune export`"
        )
    modelfile_digest = file_digest(run.modelfile)[0]  # what is proved is the file as written
    mf = ollama.read(run.modelfile)
    gguf_path = run.path / exported.gguf
    if not gguf_path.is_file() or not (run.merged / "config.json").is_file():
        raise MeshtuneError(f"{run.path}: {exported.gguf} or merged/ is missing; re-run export")
    digest, size = file_digest(gguf_path)
    proved_stat = gguf_path.stat()
    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(run.merged)
    chats = _Chats.of(mf, tokenizer)
    template = mf.first("template")
    checks = _llama_cpp_checks(
        gguf_path, run.merged, tokenizer, chats, template.args if template else "", exported.quant
    )
    context = _context_length(run.merged)
    checks.append(_check_modelfile(run.modelfile, mf, chat.family_of(tokenizer), context))
    result = Verification(exported.gguf, exported.quant, checks, digest, size, modelfile_digest)
    now = gguf_path.stat()
    if (now.st_size, now.st_mtime_ns) != (proved_stat.st_size, proved_stat.st_mtime_ns):
        raise MeshtuneError(f"{gguf_path}: changed while it was verified; run verify again")
    if file_digest(run.modelfile)[0] != modelfile_digest:
        raise MeshtuneError(f"{run.modelfile}: changed while it was verified; run verify again")
    result.save(run.verification)
    return result


def _llama_cpp_checks(
    gguf_path: Path, merged: Path, tokenizer: Any, c: _Chats, template: str, quant: str
) -> list[Check]:
    """metadata, tokens, template, logits and stops, in that order."""
    # Stopping as deployed: llama.cpp's default settings, as Ollama runs it, on what Ollama
    # leaves of each prompt at the bot's shipped num_ctx.
    bos = chat.adds_bos(tokenizer)
    seen = [ollama_cut(ids, SHIPPED.num_ctx, bos).tokens for ids in c.ids[: c.quick]]
    llm = _llama(gguf_path, n_ctx=max(map(len, seen)) + c.limit + 8)
    stops = _check_stops(llm, tokenizer, c.chats[: c.quick], seen, c.eot, c.limit)
    del llm
    # Logits on every chat, the quick prompts with their greedy replies (where top-1 decides
    # what the bot says).
    replies = [r["ids"][:REPLY_POSITIONS] for r in stops.data["replies"]]
    sequences = [ids + r for ids, r in zip(seen, replies, strict=True)]
    sequences += c.ids[c.quick :]
    prompt_lengths = [len(ids) for ids in seen + c.ids[c.quick :]]
    with tempfile.TemporaryDirectory() as tmp:
        # transformers first, its logits parked on disk, so the merged model and the GGUF are
        # never in memory together.
        reference = _transformers_logits(merged, sequences, Path(tmp))
        # The file against merged/: a float32 KV cache, so the comparison measures the GGUF's
        # weights, not llama.cpp's default f16 cache.
        llm = _llama(
            gguf_path,
            n_ctx=max(map(len, sequences + c.ids)) + 8,
            n_batch=128,  # bounds the logits buffer
            logits_all=True,
            type_k=0,  # GGML_TYPE_F32
            type_v=0,
        )
        checks = [
            _check_metadata(llm, tokenizer, chat.family_of(tokenizer), c.eot),
            _check_tokens(llm, tokenizer, c.texts, c.ids),
            _check_template(llm, template, c.chats, c.ids),
            _check_logits(llm, reference, sequences, prompt_lengths, quant),
        ]
        del llm
    return [*checks, stops]


def _context_length(merged: Path) -> int | None:
    """The context the model was built for (merged/config.json's max_position_embeddings)."""
    n = read_json(merged / "config.json", "re-run export").get("max_position_embeddings")
    return n if isinstance(n, int) and n > 0 else None


def _check_modelfile(
    path: Path, mf: ollama.Modelfile, family: chat.ChatFamily, context: int | None
) -> Check:
    """The Modelfile's lint (`meshtune modelfile check`), less what the checks above already
    proved on the GGUF itself (its eos and TEMPLATE), plus the family's stops and num_ctx
    against the model's context."""
    findings = modelfile.check(path, against_gguf=False)
    findings += modelfile.stop_findings(mf, family, str(path))
    findings += modelfile.context_findings(mf, context, str(path))
    errors = [f for f in findings if f.severity == "error"]
    return Check(
        "modelfile",
        not errors,
        f"{len(errors)} errors, {len(findings) - len(errors)} warnings"
        + "".join(f"; {f.code} {f.message}" for f in findings),
        {"findings": [f.to_dict() for f in findings]},
    )


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
    if add_bos != chat.adds_bos(tokenizer):
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
    bos = tokenizer.bos_token if chat.adds_bos(tokenizer) else None
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
    with torch_threads(), torch.no_grad():
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

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    replies = []
    for c, ids in zip(chats, prompts, strict=True):
        out: list[int] = []
        for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0):
            out.append(token)
            # Ollama stops on any end-of-generation token; only the end-of-turn one counts here.
            if llama_cpp.llama_vocab_is_eog(vocab, token) or len(out) >= limit:
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
