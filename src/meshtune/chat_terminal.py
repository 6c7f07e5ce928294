"""`meshtune chat MODEL`: talk to a model in the terminal exactly as Mesh Master will.

Each message goes through the bot's own request (meshmaster.build_request: the operator's
config.json, persona, DM or channel log, and the bot's options, the 80-token cap among them)
to the GGUF through llama.cpp, with the Modelfile's SYSTEM first, as Ollama renders it. Each
reply is shown as the radio will carry it: characters, UTF-8 bytes, the 160-byte chunks,
whether it hit the token cap (cut off mid-sentence), and any `/command` the bot does not have,
highlighted. `--raw` is a plain chat (the whole conversation, the Modelfile's PARAMETERs), as
`ollama run` would do it.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.text import Text

from meshtune import meshmaster
from meshtune.commands import COMMAND_RE, Registry
from meshtune.errors import MeshtuneError
from meshtune.evaluate.backends import Generation, LlamaCppBackend, ModelSpec, resolve_model
from meshtune.evaluate.profiles import Profile, Request, get_profile

HELP = """commands (everything else is sent to the model):
  /persona ID   answer as this persona (bot mode)      /dm       direct messages (bot mode)
  /channel      a channel: messages go as /ai ...      /reset    forget the conversation
  /prompt       show the last request, as sent         /quit     leave (or Ctrl-D)"""
CONTROL = ("/persona", "/dm", "/channel", "/reset", "/prompt", "/help", "/quit", "/exit")


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply as the radio will carry it."""

    text: str
    chars: int
    bytes: int
    chunks: list[str]
    tokens: int | None
    cap: int
    hit_cap: bool  # generation stopped at num_predict, not at the end of its turn
    unknown: list[str]  # commands the bot does not have, as written
    seconds: float
    prompt_tokens: int | None = None
    num_ctx: int | None = None  # the bot's context; Ollama cuts a prompt that overflows it

    @classmethod
    def of(
        cls,
        gen: Generation,
        cap: int,
        registry: Registry,
        chunk_bytes: int,
        num_ctx: int | None = None,
    ) -> "Reply":
        text = gen.text.strip()
        return cls(
            text,
            len(text),
            len(text.encode()),
            meshmaster.split_chunks(text, chunk_bytes),
            gen.completion_tokens,
            cap,
            gen.finish_reason == "length",
            [m.written for m in registry.unknown(text)],
            gen.seconds,
            gen.prompt_tokens,
            num_ctx,
        )

    @property
    def overflows(self) -> bool:
        """The prompt and the reply's cap do not fit the bot's num_ctx."""
        if self.prompt_tokens is None or self.num_ctx is None:
            return False
        return self.prompt_tokens + self.cap > self.num_ctx


def render(reply: Reply, name: str, chunk_bytes: int = meshmaster.CHUNK_BYTES) -> list[Text]:
    """The reply (unknown commands highlighted) and its radio facts, one Text per line."""
    body = Text(f"{name}> ", style="bold cyan") + highlighted(reply.text, reply.unknown)
    n = len(reply.chunks)
    tokens = f"{reply.tokens}/{reply.cap} tokens" if reply.tokens is not None else "tokens ?"
    facts = Text(
        f"  {reply.chars} chars · {reply.bytes} UTF-8 bytes · {n} chunk{'s' * (n != 1)} of "
        f"{chunk_bytes} B · {tokens} · {reply.seconds:.1f} s",
        style="dim",
    )
    lines = [body, facts]
    if reply.hit_cap:
        lines.append(
            Text(f"  HIT THE {reply.cap}-TOKEN CAP: the reply was cut off", style="bold red")
        )
    if reply.overflows:
        lines.append(
            Text(
                f"  PROMPT TOO LONG: {reply.prompt_tokens} tokens + {reply.cap} for the reply "
                f"exceed the bot's num_ctx {reply.num_ctx}; Ollama cuts the prompt to its "
                "first tokens and its tail, and the reply above answers what it left "
                "(/reset starts over)",
                style="bold red",
            )
        )
    if reply.unknown:
        lines.append(
            Text("  commands the bot does not have: ", style="bold red")
            + highlighted(" ".join(reply.unknown), reply.unknown)
        )
    if n > 1:
        for i, chunk in enumerate(reply.chunks, start=1):
            shown = chunk.replace("\n", "⏎")  # one line per chunk; ⏎ marks a line break
            lines.append(Text(f"  [{i}/{n}] {len(chunk.encode())} B: ", style="dim") + shown)
    return lines


def highlighted(text: str, unknown: list[str]) -> Text:
    out = Text(text)
    for m in COMMAND_RE.finditer(text):
        if "/" + m.group(1).lower() in unknown:
            out.stylize("bold white on red", m.start(), m.end())
    return out


@dataclass
class Session:
    """One conversation: the mode, the persona and the log the next request is built from."""

    engine: Any  # LlamaCppBackend
    spec: ModelSpec
    bot: meshmaster.BotConfig
    registry: Registry
    raw: bool = False
    channel: bool = False
    persona: str | None = None
    sender: str = "K7QX"
    seed: int = 0
    # bot mode: the bot's log of the DM and of the channel, two separate conversations
    logs: dict[bool, list[meshmaster.Line]] = field(default_factory=lambda: {False: [], True: []})
    turns: list[dict[str, str]] = field(default_factory=list)  # raw mode: the chat so far
    last: Request | None = None

    @property
    def profile(self) -> Profile:
        if self.raw:
            return get_profile("modelfile", self.spec.modelfile_options)
        return get_profile("meshmaster", bot=self.bot)

    def status(self) -> str:
        opts = ", ".join(f"{k} {v}" for k, v in self.profile.options.items())
        if self.raw:
            return f"plain chat with {self.spec.label} (the Modelfile's options: {opts})"
        persona = self.bot.persona(self.persona)
        who = f"persona {persona.id} ({persona.name})" if persona else "no persona"
        where = "on a channel (sent as /ai ...)" if self.channel else "in a DM"
        return (
            f"{self.sender} writes to {self.spec.label} {where}, {who}, config "
            f"{self.bot.source}; Mesh Master's options: {opts}"
        )

    def outgoing(self, message: str) -> str:
        """The message as the operator's node sends it: on a channel only /ai, /bot and /data
        reach the model, so a plain question goes as `/ai ...`."""
        if self.channel and message.split()[0].lower() not in meshmaster.AI_COMMANDS:
            return f"/ai {message}"
        return message

    def request(self, message: str) -> Request:
        if self.raw:
            turns = [*self.turns, {"role": "user", "content": message}]
            return Request(self.spec.system_prompt, turns, self.profile)
        bot_request = meshmaster.build_request(
            message,
            self.bot,
            persona=self.persona,
            history=self.logs[self.channel],
            sender=self.sender,
            channel=self.channel,
        )
        turns = [{"role": "user", "content": bot_request.prompt}]
        return Request(self.spec.system_prompt, turns, self.profile)

    def send(self, message: str) -> Reply:
        message = message if self.raw else self.outgoing(message)
        request = self.request(message)
        gen = self.engine.generate(request, self.seed)
        self.seed += 1
        self.last = request
        num_ctx = None if self.raw else self.bot.num_ctx
        cap = self.profile.num_predict
        reply = Reply.of(gen, cap, self.registry, meshmaster.CHUNK_BYTES, num_ctx)
        if self.raw:
            self.turns = [*request.turns, {"role": "assistant", "content": reply.text}]
        else:
            self.logs[self.channel] += [
                meshmaster.Line(self.sender, message),
                meshmaster.Line("", reply.text, ai=True),
            ]
        return reply

    def control(self, line: str) -> str | None:
        """Run an operator command; its answer, or None to leave."""
        word, _, arg = line.partition(" ")
        word, arg = word.lower(), arg.strip()
        if word in ("/quit", "/exit"):
            return None
        if word == "/help":
            return HELP
        if word == "/reset":
            self.logs[self.channel], self.turns = [], []
            return "conversation forgotten"
        if word == "/prompt":
            if self.last is None:
                return "nothing sent yet"
            shown = [f"[{m['role']}]\n{m['content']}" for m in self.last.messages]
            return "\n".join(shown) + f"\n[options] {self.last.profile.options}"
        if self.raw:
            return f"{word}: not in a plain chat (--raw); leave it out to talk as the bot"
        if word == "/persona":
            if not arg:
                ids = ", ".join(p.id for p in self.bot.personas)
                return f"usage: /persona ID (available: {ids})"
            self.persona = self.bot.persona(arg).id  # an unknown one is a one-line error
        elif word == "/dm":
            self.channel = False
        elif word == "/channel":
            self.channel = True
        return self.status()


def open_session(
    model: str,
    raw: bool = False,
    config: Path | None = None,
    personas: Path | None = None,
    persona: str | None = None,
    channel: bool = False,
    sender: str = "K7QX",
    seed: int = 0,
    threads: int | None = None,
    registry: Registry | None = None,
) -> Session:
    from meshtune.commands import load_registry

    spec = resolve_model(model, "llamacpp")
    if spec.gguf is None:
        raise MeshtuneError(f"{model}: no GGUF to chat with; run `meshtune export` first")
    bot = meshmaster.load_config(config, personas)
    if persona is not None:
        persona = bot.persona(persona).id
    # room beyond the bot's num_ctx, so an overflowing prompt is shown, not refused
    engine = LlamaCppBackend(spec.gguf, threads=threads or 1, n_ctx=max(4096, 2 * bot.num_ctx))
    return Session(
        engine, spec, bot, registry or load_registry(), raw, channel, persona, sender, seed
    )


def run(
    session: Session,
    console: Console,
    read: Callable[[str], str] = input,
) -> None:
    """The read-send-show loop until /quit or end of input."""
    console.print(session.status(), highlight=False)
    console.print("type /help for commands", style="dim")
    while True:
        try:
            line = read("you> ").strip()
        except EOFError:
            console.print()
            return
        if not line:
            continue
        try:
            if line.split()[0].lower() in CONTROL:
                answer = session.control(line)
                if answer is None:
                    return
                console.print(answer, style="yellow", highlight=False, markup=False)
                continue
            if not session.raw and not session.channel and not meshmaster.reaches_model(line):
                console.print(
                    f"{line.split()[0]}: in a DM the bot runs a command itself, it never "
                    "reaches the model; ask a question (or /help)",
                    style="yellow",
                    highlight=False,
                )
                continue
            reply = session.send(line)
        except MeshtuneError as e:
            console.print(f"error: {e}", style="red", highlight=False, markup=False)
            continue
        for text in render(reply, session.spec.label):
            console.print(text, highlight=False)
