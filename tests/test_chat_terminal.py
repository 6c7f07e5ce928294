"""`meshtune chat`: the embedded model through real llama.cpp, driven through a pseudo-terminal
(pexpect): real keystrokes in, the screen as a terminal shows it out. The transcript of each
session is saved beside the test's files (chat-transcript.txt)."""

import os
import re
import sys
from pathlib import Path

import pexpect
import pytest
from rich.console import Console
from tests.conftest import SHARED_REAL

from meshtune import meshmaster
from meshtune.chat_terminal import Reply, highlighted, render
from meshtune.commands import load_registry
from meshtune.evaluate.backends import Generation

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
FACTS = re.compile(
    r"(?P<chars>\d+) chars · (?P<bytes>\d+) UTF-8 bytes · (?P<chunks>\d+) chunks? of 160 B · "
    r"(?P<tokens>\d+)/(?P<cap>\d+) tokens"
)


class Terminal:
    """A pseudo-terminal 400 columns wide (a reply is never wrapped) running `meshtune chat`."""

    def __init__(self, args: list[str | Path], transcript: Path):
        self.transcript = transcript.open("w", encoding="utf-8")
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "meshtune", "chat", *map(str, args)],
            encoding="utf-8",
            timeout=180,
            dimensions=(50, 400),
            env={**os.environ, "TERM": "xterm-256color"},
        )
        self.child.logfile_read = self.transcript
        self.child.expect("you> ")

    def type(self, line: str) -> str:
        """Type a line at the prompt; what the screen showed until the next prompt (plain)."""
        self.child.sendline(line)
        self.child.expect("you> ")
        return ANSI.sub("", self.child.before).replace("\r\n", "\n")

    def reply(self, line: str) -> tuple[str, dict[str, int]]:
        """Send a message; the bot's reply as shown, and its numbers as shown."""
        out = self.type(line)
        facts = FACTS.search(out)
        assert facts, out
        name_end = out.index("> ", out.index(line) + len(line)) + 2
        text = out[name_end : facts.start()].removesuffix("\n  ")
        return text, {k: int(v) for k, v in facts.groupdict().items()} | {"screen": out}

    def close(self) -> int:
        self.child.sendline("/quit")
        self.child.expect(pexpect.EOF)
        self.child.close()
        self.transcript.close()
        return self.child.exitstatus


def check_numbers(text: str, n: dict) -> None:
    """The numbers under a reply are the reply's own."""
    assert n["chars"] == len(text) and n["bytes"] == len(text.encode())
    assert n["chunks"] == len(meshmaster.split_chunks(text))
    assert n["tokens"] <= n["cap"]
    assert ("TOKEN CAP" in n["screen"]) == (n["tokens"] == n["cap"])


@pytest.mark.real
def test_chat_as_the_bot_in_a_pseudo_terminal_dm_persona_channel_and_prompt(tmp_path: Path):
    term = Terminal(
        [
            "smollm2-135m",
            "--mesh-master-config",
            SHARED_REAL / "mesh-master-config.json",
            "--personas",
            SHARED_REAL / "mesh-master-personas.json",
        ],
        tmp_path / "chat-transcript.txt",
    )
    text, n = term.reply("how do I relay a message to alice?")
    check_numbers(text, n)
    assert n["cap"] == 80  # Mesh Master's num_predict
    shown = term.type("/prompt")  # exactly what llama.cpp received
    assert "Current persona: Trail (trail)" in shown  # the shipped config's default persona
    assert "Question: how do I relay a message to alice?\nAnswer:" in shown
    assert "'num_predict': 80" in shown and "'num_ctx': 1024" in shown

    assert "persona medic (Medic)" in term.type("/persona medic")
    assert "error: unknown persona 'pirate'" in term.type("/persona pirate")
    text, n = term.reply("what goes in a small first aid kit?")
    check_numbers(text, n)
    shown = term.type("/prompt")
    assert "Current persona: Medic (medic)" in shown
    assert f"K7QX: {meshmaster.DM_PLACEHOLDER}" in shown  # a DM's words are never logged

    assert "never reaches the model" in term.type("/weather")
    assert "on a channel (sent as /ai ...)" in term.type("/channel")
    text, n = term.reply("what's a good SNR?")
    check_numbers(text, n)
    shown = term.type("/prompt")
    assert "Question: what's a good SNR?" in shown
    assert "K7QX: /ai what's a good SNR?" in shown  # the bot logs the /ai message itself
    assert "first aid" not in shown  # the channel is its own log: nothing of the DM
    assert term.close() == 0


@pytest.mark.real
def test_raw_chat_keeps_the_whole_conversation_with_the_modelfile_options(tmp_path: Path):
    term = Terminal(["smollm2-135m", "--raw"], tmp_path / "chat-transcript.txt")
    text, n = term.reply("Hi, I'm Sam.")
    check_numbers(text, n)
    assert n["cap"] == 200  # the guide's Modelfile num_predict, not the bot's 80
    term.reply("What is my name?")
    shown = term.type("/prompt")
    assert "[user]\nHi, I'm Sam." in shown and "[assistant]\n" + text.strip() in shown
    assert "Question:" not in shown  # no Mesh Master wrapping
    assert "not in a plain chat" in term.type("/persona medic")
    assert term.close() == 0


def test_a_reply_cut_at_the_cap_with_an_invented_command_is_flagged_and_highlighted():
    text = "Use /relay alice to forward it, or /dm her. Long replies are split " + "x" * 150
    gen = Generation(text, "length", 80, 30, 1.0)
    reply = Reply.of(gen, 80, load_registry(), meshmaster.CHUNK_BYTES, num_ctx=1024)
    assert reply.hit_cap and reply.unknown == ["/relay"]  # /dm is a real Mesh Master command
    console = Console(record=True, width=400, color_system="truecolor", force_terminal=True)
    for line in render(reply, "bot"):
        console.print(line)
    plain = console.export_text(styles=False)
    assert "HIT THE 80-TOKEN CAP" in plain
    assert "commands the bot does not have: /relay" in plain
    assert f"[1/2] {len(reply.chunks[0].encode())} B: " in plain
    assert "PROMPT TOO LONG" not in plain  # 30 + 80 tokens fit 1024
    overflow = Reply.of(Generation("ok", "stop", 1, 1000, 0.1), 80, load_registry(), 160, 1024)
    assert overflow.overflows and not overflow.hit_cap
    span = next(s for s in highlighted(text, reply.unknown).spans)
    assert text[span.start : span.end] == "/relay" and span.style == "bold white on red"
