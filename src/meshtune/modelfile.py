"""Ollama Modelfiles: write one per chat family, parse and lint existing ones, and render their
TEMPLATE with Go's text/template (the engine Ollama uses) to prove it.

Ollama wraps every request in the Modelfile's TEMPLATE. A TEMPLATE that renders a different
prompt from the one the model was trained on is the classic cause of a fine-tune that never
stops (lessons.md), so meshtune writes an explicit TEMPLATE per chat family and checks it by
rendering it with Go, not by reading it.
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from meshtune import chat
from meshtune.commands import Registry, load_registry
from meshtune.errors import Issue, MeshtuneError, register_codes
from meshtune.files import read_text
from meshtune.meshmaster import CHUNK_BYTES, MAX_CHUNKS, OPTIONS

# PARAMETER names Ollama accepts (api.Options), by value type; others are "unknown parameter".
PARAMETERS: dict[str, type] = {
    "num_ctx": int,
    "repeat_last_n": int,
    "repeat_penalty": float,
    "temperature": float,
    "seed": int,
    "stop": str,
    "num_predict": int,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "num_keep": int,
    "typical_p": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
}
# Accepted by Ollama's parser with a warning and then ignored.
DEPRECATED_PARAMETERS = {
    "penalize_newline", "low_vram", "f16_kv", "logits_all", "vocab_only", "use_mlock",
    "mirostat", "mirostat_tau", "mirostat_eta",
}  # fmt: skip
INSTRUCTIONS = {
    "from", "parameter", "template", "system", "adapter", "license", "message", "draft",
    "renderer", "parser", "requires",
}  # fmt: skip

# The longest reply Mesh Master sends is MAX_CHUNKS radio chunks of CHUNK_BYTES; at about four
# bytes per token of English that is this many tokens. (Mesh Master itself sends num_predict 80.)
NUM_PREDICT = MAX_CHUNKS * CHUNK_BYTES // 4

# The v2 guide's sampling values; a recipe's `ollama:` section overrides them.
DEFAULT_PARAMETERS: dict[str, Any] = {
    "temperature": 0.5,
    "repeat_penalty": 1.15,
    "top_p": 0.85,
    "top_k": 30,
    "num_ctx": 2048,
    "num_predict": NUM_PREDICT,
}

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
}
register_codes(CODES)


# ---------------------------------------------------------------------------------------------
# Parsing (Ollama's rules: parser/parser.go)


@dataclass(frozen=True, slots=True)
class Command:
    name: str  # lower case; "model" for FROM, the parameter's name for PARAMETER
    args: str
    line: int


@dataclass(frozen=True, slots=True)
class Modelfile:
    path: str
    commands: tuple[Command, ...]

    def first(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)

    @property
    def parameters(self) -> list[Command]:
        fixed = INSTRUCTIONS | {"model"}
        return [c for c in self.commands if c.name not in fixed]

    @property
    def stops(self) -> list[str]:
        return [c.args for c in self.commands if c.name == "stop"]


def parse(text: str, path: str = "Modelfile") -> Modelfile:
    """Commands as Ollama reads them. A value runs to the end of its line unless it opens a
    quote: triple-quoted and "quoted" values may span lines and are taken verbatim."""
    lines = text.splitlines()
    commands: list[Command] = []
    i = 0
    while i < len(lines):
        start = i
        stripped = lines[i].lstrip(" \t")
        i += 1
        if not stripped or stripped.startswith("#"):
            continue
        instruction = re.match(r"([A-Za-z]+)[ \t]+(\S.*)", stripped)
        if not instruction or instruction[1].lower() not in INSTRUCTIONS:
            raise MeshtuneError(
                f"{path}:{start + 1}: expected an instruction and its value, e.g. FROM ./x.gguf "
                f"(instructions: {', '.join(sorted(n.upper() for n in INSTRUCTIONS))})"
            )
        name, value = instruction[1].lower(), instruction[2]
        if name == "parameter":
            parameter = re.match(r"([A-Za-z0-9_]+)[ \t]+(\S.*)", value)
            if not parameter:
                raise MeshtuneError(f"{path}:{start + 1}: PARAMETER needs a name and a value")
            name, value = parameter[1], parameter[2]
        if name == "from":
            name = "model"
        while (unquoted := _unquote(value.strip())) is None:
            if i >= len(lines):
                raise MeshtuneError(
                    f"{path}:{start + 1}: unterminated quoted value; close it with the same quote"
                )
            value += "\n" + lines[i]
            i += 1
        if name == "message":
            role, _, content = unquoted.partition(" ")
            unquoted = f"{role}: {content}"
        commands.append(Command(name, unquoted, start + 1))
    if not any(c.name == "model" for c in commands):
        raise MeshtuneError(f"{path}: no FROM line; add `FROM ./<model>.gguf`")
    return Modelfile(path, tuple(commands))


def _unquote(s: str) -> str | None:
    """Ollama's unquote: None while a quoted value is still open."""
    if s.startswith('"""'):
        return s[3:-3] if len(s) >= 6 and s.endswith('"""') else None
    if s.startswith('"'):
        return s[1:-1] if len(s) >= 2 and s.endswith('"') else None
    return s


def read(path: str | Path) -> Modelfile:
    path = Path(path)
    return parse(read_text(path), str(path))


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
    if prefix == tokenizer.bos_token and adds_bos(tokenizer):
        prefix = ""
    if family.name == "chatml":
        body = (
            "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
            "{{ end }}<|im_start|>assistant\n"
        )
    elif family.name == "llama3":
        # Llama-3.1/3.2 templates open the system turn with a fixed preamble (knowledge
        # cutoff and date); Llama-3.0's has none.
        header = "<|start_header_id|>system<|end_header_id|>\n\n"
        preamble = probe[probe.index(header) + len(header) : probe.index(_SENTINEL)]
        system = ""
        if preamble:
            system = f'{{{{ if eq .Role "system" }}}}{_literal(preamble)}{{{{ end }}}}'
        body = (
            "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n"
            + system
            + "{{ .Content }}<|eot_id|>"
            "{{- end }}<|start_header_id|>assistant<|end_header_id|>\n\n"
        )
    else:  # a family added to chat.FAMILIES without a TEMPLATE here
        raise MeshtuneError(f"no Ollama TEMPLATE for chat family {family.name!r}")
    return _literal(prefix) + body


_SENTINEL = "MESHTUNE-SYSTEM-PROMPT"


def _go(s: str) -> str:
    """A Go template string literal (JSON strings are valid Go interpreted literals)."""
    return json.dumps(s, ensure_ascii=False)


def _literal(s: str) -> str:
    return f"{{{{ {_go(s)} }}}}" if s else ""


def adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer (and so the GGUF's add_bos_token) puts BOS before every text."""
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


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
    with tempfile.TemporaryDirectory(dir=binary.parent) as tmp:
        src = Path(tmp) / "main.go"
        src.write_bytes(source)
        out = Path(tmp) / "renderer"
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
        os.replace(out, binary)
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


def check_parameters(parameters: dict[str, Any], where: str) -> None:
    """PARAMETER values meshtune may write: Ollama's names and value types. `stop` is not
    among them: the stops are the chat family's."""
    for name, value in parameters.items():
        if name not in PARAMETERS or name == "stop":
            accepted = ", ".join(n for n in PARAMETERS if n != "stop")
            raise MeshtuneError(
                f"{where}: {name!r} is not a PARAMETER meshtune writes (stops come from the chat "
                f"family); use one of {accepted}"
            )
        if isinstance(value, (dict, list)) or not _valid_value(PARAMETERS[name], str(value)):
            raise MeshtuneError(
                f"{where}: {name} {value!r} is not a valid {PARAMETERS[name].__name__}; fix it"
            )


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
    return GgufInfo(
        path=str(path),
        chat_template=meta.get("tokenizer.chat_template", ""),
        bos_text=text(vocab.token_bos()) if vocab.token_bos() >= 0 else "",
        eos_id=eos,
        eos_text=text(eos),
        eot_id=int(eot) if eot is not None else None,
        add_bos=meta.get("tokenizer.ggml.add_bos_token", "false") == "true",
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
    path: str | Path, gguf: str | Path | None = None, registry: Registry | None = None
) -> list[Issue]:
    """Every problem of a Modelfile. Given a GGUF (or when FROM names one that exists), also the
    stop tokens and TEMPLATE against that model's chat template and end-of-turn token."""
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
    registry = registry or load_registry()
    findings: list[Issue] = []

    def add(code: str, cmd: Command | None, message: str, fix: str) -> None:
        findings.append(Issue(code, where, cmd.line if cmd else None, message, fix))

    model = mf.first("model")
    assert model is not None  # parse() requires FROM
    target, kind = _from_target(model.args, path.parent)
    if kind == "invalid":
        add("E304", model, f"FROM {model.args!r} is not a valid path", "name the GGUF file")
        target = None
    elif kind == "missing":
        add(
            "E304",
            model,
            f"FROM {model.args} does not exist beside the Modelfile ({target})",
            "FROM is relative to the Modelfile: name the GGUF file that sits next to it",
        )
    elif kind == "dir" and target is not None and not any(target.glob("*.safetensors")):
        # Ollama imports a folder only when it holds Safetensors weights
        add(
            "E304",
            model,
            f"FROM {model.args} is a folder without model weights ({target})",
            "name the GGUF file: FROM ./<model>.gguf",
        )
    system = mf.first("system")
    if system:
        for m in registry.unknown(system.args):
            spec = registry.nonexistent.get(m.written)
            instead = f" ({spec.instead})" if spec and spec.instead else ""
            add(
                "E305",
                system,
                f"SYSTEM names {m.written}, which {registry.bot} does not have{instead}",
                "the model repeats what SYSTEM says: remove it or name the real command",
            )
    for p in mf.parameters:
        if p.name in DEPRECATED_PARAMETERS:
            add("W304", p, f"PARAMETER {p.name} is deprecated and ignored by Ollama", "remove it")
        elif p.name not in PARAMETERS:
            add(
                "E302",
                p,
                f"PARAMETER {p.name} is not an Ollama parameter (Ollama fails: unknown parameter)",
                f"use one of {', '.join(PARAMETERS)}",
            )
        elif not _valid_value(PARAMETERS[p.name], p.args):
            add(
                "E303",
                p,
                f"PARAMETER {p.name} {p.args!r} is not a valid {PARAMETERS[p.name].__name__}",
                "fix the value",
            )
        elif p.name == "num_predict" and p.args.strip() in {"-1", "-2"}:
            add(
                "W305",
                p,
                "num_predict is unlimited: a looping model never stops",
                f"set a limit, e.g. {NUM_PREDICT}",
            )
    template = mf.first("template")
    if template is None:
        add(
            "W301",
            None,
            "no TEMPLATE: Ollama guesses one from the GGUF and may guess wrong (ollama#8363)",
            "write the TEMPLATE of the model's chat family (meshtune export does)",
        )
    if not mf.stops:
        add("W302", None, "no PARAMETER stop", "add one per end-of-turn token of the chat family")

    if gguf is not None:
        findings += _check_against_gguf(mf, read_gguf(gguf), where)
    elif target is not None and target.suffix == ".gguf" and target.is_file():
        try:
            info = read_gguf(target)
        except MeshtuneError as e:
            add("E304", model, f"FROM {model.args} is not a model llama.cpp can load", str(e))
        else:
            findings += _check_against_gguf(mf, info, where)
    return findings


def _check_against_gguf(mf: Modelfile, info: GgufInfo, where: str) -> list[Issue]:
    findings: list[Issue] = []
    family = chat.family_of(SimpleNamespace(chat_template=info.chat_template))
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
    stop_lines = [c for c in mf.commands if c.name == "stop"]
    last = stop_lines[-1] if stop_lines else None
    if eot_text not in mf.stops:
        findings.append(
            Issue(
                "E306",
                where,
                last.line if last else None,
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
                    last.line if last else None,
                    f"no PARAMETER stop {_go(stop)} ({family.name} turn marker)",
                    f"add PARAMETER stop {_go(stop)}, so a skipped end-of-turn cannot run on",
                )
            )
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


def local_model(mf: Modelfile, folder: Path) -> Path | None:
    """The local file or folder FROM names (None for a model name or an unusable path)."""
    model = mf.first("model")
    return _from_target(model.args, folder)[0] if model else None


def _from_target(args: str, folder: Path) -> tuple[Path | None, str]:
    """FROM's local path and what is there: file, dir, missing, invalid (a name Ollama cannot
    open: a NUL byte, an unknown ~user, too long); (None, "name") for a model name."""
    try:
        target = _from_path(args, folder)
        if target is None:
            return None, "name"
        if target.is_dir():
            return target, "dir"
        return target, "file" if target.exists() else "missing"
    except (ValueError, RuntimeError, OSError):
        return None, "invalid"


def _from_path(args: str, folder: Path) -> Path | None:
    """The local file FROM names, resolved as Ollama does; None for a model name."""
    if args.startswith(("/", "./", "../", "~")) or args.endswith((".gguf", ".bin")):
        return (folder / Path(args).expanduser()).resolve()
    return None


def _valid_value(kind: type, value: str) -> bool:
    value = value.strip()
    if kind is str:
        return True
    if kind is bool:
        return value.lower() in {"true", "false", "1", "0", "t", "f"}
    try:
        kind(value)
    except ValueError:
        return False
    return True
