"""Ollama Modelfiles: write one per chat family, lint existing ones, and render their TEMPLATE
with Go's text/template (the engine Ollama uses) to prove it.

Ollama wraps every request in the Modelfile's TEMPLATE. A TEMPLATE that renders a different
prompt from the one the model was trained on is the classic cause of a fine-tune that never
stops (lessons.md), so meshtune writes an explicit TEMPLATE per chat family and checks it by
rendering it with Go, not by reading it. The syntax and the values are meshtune.ollama's.
"""

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from meshtune import chat
from meshtune.commands import Registry, load_registry
from meshtune.errors import Issue, MeshtuneError, register_codes
from meshtune.files import atomic
from meshtune.meshmaster import CHUNK_BYTES, MAX_CHUNKS, OPTIONS
from meshtune.ollama import (
    DEPRECATED_PARAMETERS,
    NUM_PREDICT,
    PARAMETERS,
    Command,
    Modelfile,
    _from_target,
    _valid_value,
    check_parameters,
    read,
)

# code -> (name, severity) of the findings this module reports
CODES: dict[str, tuple[str, str]] = {
    "E301": ("syntax", "error"),
    "E302": ("unknown-parameter", "error"),
    "E303": ("bad-parameter-value", "error"),
    "E304": ("missing-model-file", "error"),
    "E305": ("unknown-command-in-system", "error"),
    "E306": ("missing-end-of-turn-stop", "error"),
    "E307": ("template-mismatch", "error"),
    "E308": ("wrong-eos-in-gguf", "error"),
    "W301": ("no-template", "warning"),
    "W302": ("no-stop", "warning"),
    "W303": ("missing-family-stop", "warning"),
    "W304": ("deprecated-parameter", "warning"),
    "W305": ("unlimited-num-predict", "warning"),
    "W306": ("template-not-checked", "warning"),
    "E309": ("repeated-instruction", "error"),
    "E310": ("stop-cuts-replies", "error"),
    "E311": ("num-ctx-beyond-model", "error"),
    "W307": ("from-a-model-name", "warning"),
}

register_codes(CODES)


# ---------------------------------------------------------------------------------------------
# The TEMPLATE of each chat family


def template_for(tokenizer: Any) -> str:
    """The Go TEMPLATE that renders what `chat.render` renders for this tokenizer's family, as
    the runtime sees it: when llama.cpp adds BOS itself (the GGUF's add_bos_token), the
    template leaves it out, or the model would see two."""
    family = chat.family_of(tokenizer)
    probe = chat.render(
        tokenizer,
        [chat.Message("system", _SENTINEL), chat.Message("user", "u")],
        generation_prompt=True,
    )
    prefix = probe[: probe.index(family.marker)]  # what the template prints before any turn
    if prefix == tokenizer.bos_token and chat.adds_bos(tokenizer):
        prefix = ""
    # Llama-3.1/3.2 templates open the system turn with a fixed preamble (knowledge cutoff and
    # date); Llama-3.0's and ChatML's have none.
    start = probe.index(family.system_header) + len(family.system_header)
    preamble = probe[start : probe.index(_SENTINEL)]
    turns = family.ollama_turns
    if preamble:
        system = f'{{{{ if eq .Role "system" }}}}{_literal(preamble)}{{{{ end }}}}'
        turns = turns.replace("{{ .Content }}", system + "{{ .Content }}", 1)
    return _literal(prefix) + turns


_SENTINEL = "MESHTUNE-SYSTEM-PROMPT"


def _go(s: str) -> str:
    """A Go template string literal (JSON strings are valid Go interpreted literals)."""
    return json.dumps(s, ensure_ascii=False)


def _literal(s: str) -> str:
    return f"{{{{ {_go(s)} }}}}" if s else ""


def ollama_messages(messages: Sequence[chat.Message], system: str | None) -> list[dict[str, str]]:
    """The messages Ollama hands to TEMPLATE: the Modelfile's SYSTEM first, unless the request
    brings its own system message (Mesh Master's /api/generate call never does)."""
    out = chat.as_dicts(messages)
    if system and not any(m["role"] == "system" for m in out):
        out.insert(0, {"role": "system", "content": system})
    return out


# ---------------------------------------------------------------------------------------------
# Rendering with Go


def render_go(template: str, conversations: Sequence[Sequence[dict[str, str]]]) -> list[str]:
    """Render TEMPLATE for each conversation (Ollama's message shape) with Go's text/template,
    following Ollama's rules (see assets/ollama_template.go)."""
    binary = _go_renderer()
    payload = json.dumps({"template": template, "conversations": [list(c) for c in conversations]})
    proc = subprocess.run(
        [str(binary)], input=payload, capture_output=True, text=True, timeout=60, check=False
    )
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError:
        out = {"error": proc.stderr.strip() or "no output"}
    if proc.returncode or not isinstance(out, list):
        detail = out.get("error", proc.stderr.strip()) if isinstance(out, dict) else proc.stderr
        raise MeshtuneError(f"Ollama cannot render this TEMPLATE: {detail}; fix the template")
    return out


def go_available() -> bool:
    return shutil.which("go") is not None


def _go_renderer() -> Path:
    """Build the Go helper once per source version into meshtune's cache."""
    from meshtune.models import cache_root

    source = resources.files("meshtune").joinpath("assets/ollama_template.go").read_bytes()
    binary = cache_root() / "go" / f"ollama-template-{hashlib.sha1(source).hexdigest()[:12]}"
    if binary.is_file():
        return binary
    go = shutil.which("go")
    if go is None:
        raise MeshtuneError(
            "`go` is not installed, so the Modelfile TEMPLATE cannot be rendered with Ollama's "
            "engine; install Debian's golang-go (`make go`)"
        )
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOCACHE": os.environ.get("GOCACHE", str(binary.parent / "build"))}
    env.setdefault("HOME", str(binary.parent))
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp, atomic(binary) as out:
        src = Path(tmp) / "main.go"
        src.write_bytes(source)
        proc = subprocess.run(
            [go, "build", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=300,
        )
        if proc.returncode:
            raise MeshtuneError(f"building the Go template renderer failed: {proc.stderr.strip()}")
    return binary


# ---------------------------------------------------------------------------------------------
# Writing


def build(
    *,
    gguf_name: str,
    template: str,
    system: str,
    parameters: dict[str, Any],
    stops: Sequence[str],
    header: str,
) -> str:
    """The Modelfile text. FROM is relative to the Modelfile, so the pair can move together."""
    for label, text in (("TEMPLATE", template), ("SYSTEM", system)):
        if '"""' in text:
            raise MeshtuneError(f'the {label} contains """, which a Modelfile cannot quote')
    check_parameters(parameters, "the Modelfile parameters")
    lines = [*(f"# {h}" if h else "#" for h in header.splitlines()), ""]
    lines += [f"FROM ./{gguf_name}", ""]
    lines += [
        "# The chat template the model was trained on, in Ollama's Go template language.",
        "# Ollama puts SYSTEM first when a request brings no system message of its own.",
        f'TEMPLATE """{template}"""',
        "",
        f'SYSTEM """{system}"""',
        "",
        "# Sampling for clients that send no options of their own. Mesh Master sends its own",
        f"# with every request ({', '.join(f'{k} {v}' for k, v in OPTIONS.items())},",
        "# num_ctx from its config), and those override these.",
    ]
    for name, value in parameters.items():
        if name == "num_predict" and value == NUM_PREDICT:
            lines.append(
                f"# {MAX_CHUNKS} radio chunks of {CHUNK_BYTES} bytes, the most Mesh Master sends"
            )
        lines.append(f"PARAMETER {name} {_format_value(value)}")
    lines.append("# The end-of-turn and turn-header tokens of this chat family.")
    lines += [f"PARAMETER stop {_go(s)}" for s in stops]
    return "\n".join(lines) + "\n"


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------------------------
# Linting


@dataclass(frozen=True, slots=True)
class GgufInfo:
    """What the lint needs from a GGUF: its chat family and end-of-turn metadata."""

    path: str
    chat_template: str
    bos_text: str
    eos_id: int
    eos_text: str
    eot_id: int | None
    add_bos: bool
    context_length: int | None  # the context the model was trained for
    vocab: Any  # a vocab-only llama_cpp.Llama, for tokenizing


def read_gguf(path: str | Path) -> GgufInfo:
    from llama_cpp import Llama

    path = Path(path)
    if not path.is_file():
        raise MeshtuneError(f"{path}: no such GGUF file; check the path")
    try:
        # A vocab-only load still makes a context, and llama.cpp warns that it has no
        # training context length; that warning is noise here.
        with contextlib.redirect_stderr(io.StringIO()):
            vocab = Llama(str(path), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as e:
        raise MeshtuneError(f"{path}: llama.cpp cannot read this GGUF ({e})") from e
    meta = vocab.metadata

    def text(token: int) -> str:
        return vocab.detokenize([token], special=True).decode(errors="replace")

    eos = vocab.token_eos()
    eot = meta.get("tokenizer.ggml.eot_token_id")
    context = meta.get(f"{meta.get('general.architecture')}.context_length", "")
    return GgufInfo(
        path=str(path),
        chat_template=meta.get("tokenizer.chat_template", ""),
        bos_text=text(vocab.token_bos()) if vocab.token_bos() >= 0 else "",
        eos_id=eos,
        eos_text=text(eos),
        eot_id=int(eot) if eot is not None else None,
        add_bos=meta.get("tokenizer.ggml.add_bos_token", "false") == "true",
        context_length=int(context) if context.isdigit() else None,
        vocab=vocab,
    )


def token_ids(info: GgufInfo, text: str, runtime: bool) -> list[int]:
    """llama.cpp's token ids for `text`; `runtime` adds BOS as Ollama does (when the GGUF asks
    for it), otherwise the text is taken as a whole rendered prompt."""
    return info.vocab.tokenize(text.encode(), add_bos=runtime, special=True)


# The conversations a TEMPLATE is proven on: Mesh Master's single prompt (Ollama adds SYSTEM),
# a client that brings its own system message, and a multi-turn chat.
PROOF_CONVERSATIONS: tuple[tuple[chat.Message, ...], ...] = (
    (chat.Message("user", "What's a good SNR?"),),
    (
        chat.Message("system", "Answer in one short line."),
        chat.Message("user", "Hey are you there?"),
    ),
    (
        chat.Message("user", "How do I relay to alice?"),
        chat.Message("assistant", "DM me 'alice <message>' and I'll pass it on."),
        chat.Message("user", "And to bob?"),
    ),
)


def check(
    path: str | Path,
    gguf: str | Path | None = None,
    registry: Registry | None = None,
    against_gguf: bool = True,
) -> list[Issue]:
    """Every problem of a Modelfile. Given a GGUF (or when FROM names one that exists, unless
    `against_gguf` is off), also the stop tokens and TEMPLATE against that model's chat
    template and end-of-turn token."""
    path = Path(path)
    where = str(path)
    try:
        mf = read(path)
    except MeshtuneError as e:
        if not path.is_file():
            raise
        line_match = re.match(rf"{re.escape(where)}:(\d+): (.*)", str(e))
        line, msg = (int(line_match[1]), line_match[2]) if line_match else (None, str(e))
        return [Issue("E301", where, line, msg, "Ollama refuses this file")]
    findings = _Findings(where)
    _check_repeated(mf, findings)
    target = _check_from(mf, path.parent, findings)
    _check_system(mf, registry or load_registry(), findings)
    _check_parameters(mf, findings)
    _check_stops(mf, findings)
    if mf.first("template") is None:
        findings.add(
            "W301",
            None,
            "no TEMPLATE: Ollama guesses one from the GGUF and may guess wrong (ollama#8363)",
            "write the TEMPLATE of the model's chat family (meshtune export does)",
        )
    if not mf.stops:
        findings.add(
            "W302", None, "no PARAMETER stop", "add one per end-of-turn token of the chat family"
        )
    if gguf is not None:
        findings.issues += _check_against_gguf(mf, read_gguf(gguf), where)
    elif against_gguf and target is not None:
        model = mf.first("model")
        assert model is not None  # parse() requires FROM
        try:
            info = read_gguf(target)
        except MeshtuneError as e:
            message = f"FROM {model.args} is not a model llama.cpp can load"
            findings.add("E304", model, message, str(e))
        else:
            findings.issues += _check_against_gguf(mf, info, where)
    return findings.issues


@dataclass(slots=True)
class _Findings:
    where: str
    issues: list[Issue] = field(default_factory=list)

    def add(self, code: str, cmd: Command | None, message: str, fix: str) -> None:
        self.issues.append(Issue(code, self.where, cmd.line if cmd else None, message, fix))


def _check_repeated(mf: Modelfile, findings: _Findings) -> None:
    """One FROM, TEMPLATE and SYSTEM: Ollama applies the last of each, so a second one added
    after the proof is what the Pi serves, not what was proven."""
    for name in ("model", "template", "system"):
        first, *more = [c for c in mf.commands if c.name == name] or [None]
        shown = "FROM" if name == "model" else name.upper()
        for c in more:
            assert first is not None
            findings.add(
                "E309",
                c,
                f"a second {shown} (the first is line {first.line}): Ollama applies the last "
                "one, so the model is not served as it was proven",
                f"keep one {shown}",
            )


def _check_from(mf: Modelfile, folder: Path, findings: _Findings) -> Path | None:
    """FROM names a GGUF file beside the Modelfile (what export writes and deploy ships);
    returns it, or None when it is something else (then the GGUF checks cannot run)."""
    model = mf.first("model")
    assert model is not None  # parse() requires FROM
    target, kind = _from_target(model.args, folder)
    if kind == "name":
        findings.add(
            "W307",
            model,
            f"FROM {model.args} names an Ollama model, not a GGUF beside the Modelfile: what "
            "Ollama pulls is not what meshtune checked",
            "FROM ./<model>.gguf",
        )
        return None
    problem = _from_problem(model.args, target, kind, folder)
    if problem is None:
        return target
    message, fix = problem
    findings.add("E304", model, message, fix)
    return None


def _from_problem(
    args: str, target: Path | None, kind: str, folder: Path
) -> tuple[str, str] | None:
    """What is wrong with FROM's local path, as (message, fix); None for a GGUF beside it."""
    beside = "FROM is relative to the Modelfile: name the GGUF file that sits next to it"
    if kind == "invalid" or target is None:
        return f"FROM {args!r} is not a valid path", "name the GGUF file"
    if kind == "missing":
        return f"FROM {args} does not exist beside the Modelfile ({target})", beside
    if target.parent != folder.resolve():
        return f"FROM {args} is outside the Modelfile's folder ({target})", beside
    if kind == "dir":
        # (Ollama imports a folder only when it holds Safetensors weights)
        weights = "" if any(target.glob("*.safetensors")) else " without model weights"
        return f"FROM {args} is a folder{weights}, not a GGUF file ({target})", "FROM ./<x>.gguf"
    try:
        with target.open("rb") as f:
            magic = f.read(4)
    except OSError as e:
        return f"FROM {args} cannot be read ({e.strerror})", "check the file"
    if magic != b"GGUF":
        return (
            f"FROM {args} is not a GGUF file (no GGUF header): not a model llama.cpp can load",
            beside,
        )
    return None


def _check_system(mf: Modelfile, registry: Registry, findings: _Findings) -> None:
    """SYSTEM names no command the bot does not have: the model repeats what SYSTEM says."""
    system = mf.first("system")
    if not system:
        return
    for m in registry.unknown(system.args):
        spec = registry.nonexistent.get(m.written)
        instead = f" ({spec.instead})" if spec and spec.instead else ""
        findings.add(
            "E305",
            system,
            f"SYSTEM names {m.written}, which {registry.bot} does not have{instead}",
            "the model repeats what SYSTEM says: remove it or name the real command",
        )


def _check_parameters(mf: Modelfile, findings: _Findings) -> None:
    for p in mf.parameters:
        if p.name in DEPRECATED_PARAMETERS:
            findings.add(
                "W304", p, f"PARAMETER {p.name} is deprecated and ignored by Ollama", "remove it"
            )
        elif p.name not in PARAMETERS:
            findings.add(
                "E302",
                p,
                f"PARAMETER {p.name} is not an Ollama parameter (Ollama fails: unknown parameter)",
                f"use one of {', '.join(PARAMETERS)}",
            )
        elif not _valid_value(PARAMETERS[p.name], p.args):
            findings.add(
                "E303",
                p,
                f"PARAMETER {p.name} {p.args!r} is not a valid {PARAMETERS[p.name].__name__}",
                "fix the value",
            )
        elif p.name == "num_predict" and p.args.strip() in {"-1", "-2"}:
            findings.add(
                "W305",
                p,
                "num_predict is unlimited: a looping model never stops",
                f"set a limit, e.g. {NUM_PREDICT}",
            )


# A stop that is a plain word or one punctuation mark ends a reply wherever it occurs.
_CUTTING_STOP = re.compile(r"\s*(?:[^\W\d_]+|[.,!?;:])\s*")


def _check_stops(mf: Modelfile, findings: _Findings) -> None:
    for c in mf.commands:
        if c.name == "stop" and _CUTTING_STOP.fullmatch(c.args):
            findings.add(
                "E310",
                c,
                f"PARAMETER stop {_go(c.args)} is ordinary text: every reply ends at its first "
                f"{c.args.strip()!r}",
                "stop only on the chat family's special tokens (meshtune export writes them)",
            )


def context_findings(mf: Modelfile, context: int | None, where: str) -> list[Issue]:
    """num_ctx within the context the model was trained for: beyond it, a long prompt is read
    with positions the model never saw."""
    return [
        Issue(
            "E311",
            where,
            p.line,
            f"PARAMETER num_ctx {p.args.strip()} is beyond the model's context ({context} tokens)",
            f"set num_ctx {context} or less",
        )
        for p in mf.parameters
        if p.name == "num_ctx"
        and context
        and re.fullmatch(r"\s*\d+\s*", p.args)
        and int(p.args) > context
    ]


def _check_against_gguf(mf: Modelfile, info: GgufInfo, where: str) -> list[Issue]:
    findings: list[Issue] = []
    family = chat.family_of_template(info.chat_template)
    eot_text = family.end_of_turn
    if info.eos_text != eot_text:
        findings.append(
            Issue(
                "E308",
                info.path,
                None,
                f"the GGUF's eos token is {info.eos_text!r}, not {eot_text!r}, the token "
                f"{family.name} models end their turn with",
                "re-export with meshtune export (it writes the end-of-turn token as eos and eot)",
            )
        )
    findings += stop_findings(mf, family, where)
    findings += context_findings(mf, info.context_length, where)
    template = mf.first("template")
    if template is None:
        return findings
    if not go_available():
        findings.append(
            Issue(
                "W306",
                where,
                template.line,
                "TEMPLATE not checked: `go` is not installed",
                "install golang-go (make go) to render it with Ollama's engine",
            )
        )
        return findings
    system = mf.first("system")
    mismatch = template_mismatch(
        template.args, system.args if system else None, info, PROOF_CONVERSATIONS
    )
    if mismatch:
        findings.append(
            Issue(
                "E307",
                where,
                template.line,
                f"TEMPLATE renders a different prompt from the model's chat template: {mismatch}",
                "use the TEMPLATE meshtune export writes for this chat family",
            )
        )
    return findings


def stop_findings(mf: Modelfile, family: chat.ChatFamily, where: str) -> list[Issue]:
    """The family's end-of-turn token (an error) and turn markers (warnings) as stops."""
    findings: list[Issue] = []
    stop_lines = [c for c in mf.commands if c.name == "stop"]
    line = stop_lines[-1].line if stop_lines else None
    eot_text = family.end_of_turn
    if eot_text not in mf.stops:
        findings.append(
            Issue(
                "E306",
                where,
                line,
                f"no PARAMETER stop {_go(eot_text)}: the end-of-turn token of this {family.name} "
                "model",
                f"add PARAMETER stop {_go(eot_text)}",
            )
        )
    for stop in family.stops:
        if stop != eot_text and stop not in mf.stops:
            findings.append(
                Issue(
                    "W303",
                    where,
                    line,
                    f"no PARAMETER stop {_go(stop)} ({family.name} turn marker)",
                    f"add PARAMETER stop {_go(stop)}, so a skipped end-of-turn cannot run on",
                )
            )
    return findings


def template_mismatch(
    template: str,
    system: str | None,
    info: GgufInfo,
    conversations: Sequence[Sequence[chat.Message]],
) -> str | None:
    """How Ollama's prompt (TEMPLATE rendered by Go, tokenized by llama.cpp with the BOS it
    adds) differs from the model's own chat template (the GGUF's Jinja, rendered as
    transformers does), or None when they are token-for-token the same."""
    from transformers.utils.chat_template_utils import render_jinja_template

    shaped = [ollama_messages(c, system) for c in conversations]
    try:
        go_texts = render_go(template, shaped)
    except MeshtuneError as e:
        return str(e)
    for conv, go_text in zip(shaped, go_texts, strict=True):
        (jinja_text,), _ = render_jinja_template(
            conversations=[conv],
            chat_template=info.chat_template,
            add_generation_prompt=True,
            bos_token=info.bos_text,
            eos_token=info.eos_text,
            date_string=chat.TEMPLATE_DATE,
        )
        want = token_ids(info, jinja_text, runtime=False)
        got = token_ids(info, go_text, runtime=True)
        if got != want:
            return _first_difference(info, want, got, len(conv))
    return None


def _first_difference(info: GgufInfo, want: list[int], got: list[int], turns: int) -> str:
    i = next((k for k, (a, b) in enumerate(zip(want, got, strict=False)) if a != b), None)
    i = min(len(want), len(got)) if i is None else i

    def show(ids: list[int]) -> str:
        text = info.vocab.detokenize(ids[max(0, i - 3) : i + 4], special=True).decode(
            errors="replace"
        )
        return json.dumps(text, ensure_ascii=False)

    return (
        f"on a {turns}-message chat, token {i} differs: the model expects {show(want)}, "
        f"Ollama would send {show(got)}"
    )
