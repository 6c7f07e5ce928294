"""Generated rows of mesh_conversations.jsonl: what the model answers from memory, drilled.

    PYTHONPATH=src .venv/bin/python data/build_core.py   # from the repository root

Issue 21: a 135M model cannot hold the Meshtastic docs, but it can learn a closed set by heart.
This script writes three kinds of rows, in DMs and on channels, with the frames varied:

- core facts: a short list of Meshtastic facts (../shared/reference/meshtastic.md), each asked
  many ways; no other number or name appears in a reply;
- pointers: any other technical question gets the short honest pointer to `/meshtastic`
  (the bot answers that from its knowledge file);
- bot usage: each taught command's purpose and syntax from the registry, and the relay form
  (shortname first, no slash).

The rows carry `"source": "build_core"`; a run replaces the previous run's rows and keeps every
hand-written row. A question too close to an eval prompt (the overlap test's bound) is dropped,
so the suite never measures recall of these rows.
"""

import json
import random
from pathlib import Path

from meshtune import data
from meshtune.commands import load_registry
from meshtune.files import write_text

TRAIN = Path("data/mesh_conversations.jsonl")
EVAL = Path("data/eval/mesh_eval.jsonl")
SOURCE = "build_core"
SEED = 21
CHANNEL_SHARE = 0.3  # core facts and pointers asked on a channel (`/ai` there)

# Each core fact: (category, questions people type, opening sentences, closing sentences).
# A reply is one opening and one closing (or none), so no reply answers more than two
# questions (the lint's canned-reply rule). Facts from meshtastic.md only.
FACTS: list[tuple[str, list[str], list[str], list[str]]] = [
    (
        "radio",
        [
            "which modem preset do new nodes ship with",
            "stock preset on a fresh radio?",
            "what preset should i use to join the local mesh",
            "factory default modem setting",
            "what lora preset is standard",
            "preset everyone uses by default?",
        ],
        [
            "LongFast is the default modem preset.",
            "Out of the box it's LongFast.",
            "The default is LongFast.",
        ],
        [
            "Every node that talks must share the preset, region and channel settings.",
            "Keep it unless your whole mesh agrees to change.",
            "",
        ],
    ),
    (
        "radio",
        [
            "longfast spreading factor and bandwidth",
            "what sf does the default preset run",
            "how wide is longfast",
            "longfast data rate?",
        ],
        ["LongFast runs SF11 at 250 kHz, coding rate 4/5.", "SF11 and 250 kHz wide."],
        ["That gives about 1.07 kbps.", "Slow, but long range: about 1.07 kbps."],
    ),
    (
        "channels",
        [
            "is AQ== secret",
            "anyone can read the stock channel key?",
            "the default psk, private or not",
            "does the factory key keep us private",
            "is longfast encrypted for real",
            "who can read messages on the default channel",
        ],
        [
            "AQ== is the default key and it is publicly known, so the default channel is not "
            "private.",
            "Not private: the default key AQ== is public.",
            "Anyone with a node can read it: the default key AQ== is public.",
        ],
        [
            "Use a random 256-bit key for privacy.",
            "Make a channel with a random 256-bit key for your group.",
            "",
        ],
    ),
    (
        "radio",
        [
            "how many hops does a message get out of the box",
            "hop count default?",
            "highest hop setting allowed",
            "should i raise hops to 7",
            "what hop limit do nodes start with",
            "max hops meshtastic",
        ],
        [
            "The default hop limit is 3, the maximum 7.",
            "3 hops by default, 7 at most.",
            "Hop limit starts at 3 and goes up to 7.",
        ],
        [
            "3 is enough for most meshes; higher adds congestion.",
            "Raising it mostly adds congestion, so keep 3.",
            "",
        ],
    ),
    (
        "channels",
        [
            "how many channels fit on a radio",
            "channel slots per node?",
            "can i add a ninth channel",
            "channel limit on one device",
        ],
        ["Up to 8 channels, index 0-7.", "8 channels at most (0-7)."],
        ["One is PRIMARY, the rest SECONDARY or disabled.", "One primary, the others secondary."],
    ),
    (
        "channels",
        [
            "what key lengths can a channel psk be",
            "aes-128 or aes-256 for channels?",
            "psk size options",
            "how many bytes in a channel key",
        ],
        [
            "A channel key is empty (no encryption), 16 bytes (AES-128) or 32 bytes (AES-256).",
            "Empty means no encryption; 16 bytes is AES-128, 32 bytes AES-256.",
        ],
        ["Both nodes need the same channel name and key.", ""],
    ),
    (
        "troubleshooting",
        [
            "brand new node sends nothing at all",
            "radio stays silent after flashing",
            "unset region, does it matter",
            "do i need to pick a region",
        ],
        [
            "Set the region first: a node with region UNSET stays silent.",
            "Check the region. UNSET means the node never transmits.",
        ],
        ["Then match the mesh's preset and channel.", "Set it for your country."],
    ),
    (
        "radio",
        [
            "best way to reach further",
            "more distance: antenna or power",
            "how do i get better coverage from my node",
            "tips for longer links",
        ],
        [
            "Height and line of sight beat power.",
            "Put the antenna up high with a clear line of sight.",
        ],
        ["A better antenna placed higher helps most.", "That beats extra power."],
    ),
    (
        "roles",
        [
            "which role for my handheld",
            "default device role?",
            "should my pocket node be a router",
            "role for a node i carry around",
        ],
        ["CLIENT, the default, fits most nodes.", "Keep CLIENT, the default."],
        [
            "ROUTER is for well-placed infrastructure like a hilltop, not handhelds.",
            "ROUTER is meant for a fixed node on a roof or hilltop.",
        ],
    ),
    (
        "radio",
        [
            "lowest usable snr on longfast",
            "how low can snr go before longfast fails",
            "longfast snr floor?",
        ],
        [
            "LongFast still decodes down to about -17.5 dB SNR.",
            "About -17.5 dB is LongFast's floor.",
        ],
        ["Positive SNR is excellent.", "The closer you get to it, the more marginal."],
    ),
]

# Technical questions outside the core facts: the model points to /meshtastic instead of
# guessing a number or a name it was never taught.
POINTED = [
    "how does store and forward work",
    "what does client_hidden do exactly",
    "mqtt uplink setup on my node",
    "how often does telemetry get sent",
    "what is router_late for",
    "link budget of mediumslow",
    "how do i flash a rak board",
    "what does the sensor role prioritise",
    "is there a canned message module",
    "how do waypoints work",
    "what does the range test module do",
    "how do i turn on the serial module",
    "can my node act as a wifi access point",
    "what is the neighbor info module",
    "how does position precision work",
    "what is the detection sensor module",
    "how do i set a fixed position",
    "what's the paxcounter",
    "how do admin keys work remotely",
    "what's the difference between shortslow and shortfast",
    "what is traceroute good for",
    "what does the external notification module do",
    "how big is the node db",
    "what's managed mode",
    "how does the store forward server decide what to keep",
    "which firmware added public key dms",
    "what does tak tracker do",
    "how do i back up my node's config",
    "what is lost and found role",
    "can two presets talk to each other",
]
POINTERS = [  # {q}: the user's question, so no two replies are the same
    "Ask me with /meshtastic {q} and I'll answer from the reference.",
    "I'd be guessing from memory. Try /meshtastic {q} and I'll answer from the reference.",
    "Not something I know by heart. /meshtastic {q} gets you an answer from the reference.",
    "Write /meshtastic {q} and I'll look it up in the reference.",
]

# Bot usage: each command's purpose and syntax, asked these ways.
USAGE_QUESTIONS = ["what does {c} do", "how do i use {c}", "syntax for {c}", "whats {c} for",
                   "explain {c} please", "purpose of {c}?"]  # fmt: skip
# Relay asks: (question, the message to relay or None when the user gave none).
RELAY_QUESTIONS = [
    ("how do i get a message to {s}", None), ("can you pass something to {s}", None),
    ("tell {s} i'm running late", "running late"), ("{s} is out of my range, help", None),
    ("let {s} know dinner is at 6", "dinner is at 6"), ("forward a note to {s}", None),
]  # fmt: skip
SHORTNAMES = ["ALPH", "rdg4", "TWR2", "NOVA", "kb7l", "HIL3", "ECHO", "w5ax", "BASE", "pk19"]


def facts(rng: random.Random) -> list[dict]:
    """Each question once, each with its own opening and closing pair."""
    rows = []
    for category, questions, openings, closings in FACTS:
        pairs = [(o, c) for o in openings for c in closings]
        rng.shuffle(pairs)
        for q, (o, c) in zip(questions, pairs, strict=False):
            rows.append(_row(category, q, f"{o} {c}".strip(), rng.random() < CHANNEL_SHARE))
    return rows


def pointers(rng: random.Random) -> list[dict]:
    return [
        _row("radio", q, POINTERS[i % len(POINTERS)].format(q=q), rng.random() < CHANNEL_SHARE)
        for i, q in enumerate(POINTED)
    ]


def usage(rng: random.Random, taught: set[str]) -> list[dict]:
    """Two rows for each taught command (DMs: DM-only and admin commands need no note there)."""
    rows = []
    for cmd in load_registry().commands:
        if cmd.name not in taught or cmd.name == "/meshtastic":
            continue
        how = cmd.usage or cmd.name
        note = " Admins only, in a DM." if cmd.admin else ""
        for q in rng.sample(USAGE_QUESTIONS, 2):
            reply = f"{how}: {cmd.meaning.rstrip('.!')}.{note}"
            rows.append(_row("commands", q.format(c=cmd.name), reply[0].upper() + reply[1:]))
    return rows


def relays(rng: random.Random) -> list[dict]:
    rows = []
    for s in SHORTNAMES:
        question, message = rng.choice(RELAY_QUESTIONS)
        q = question.format(s=s)
        reply = (f"DM me: {s} {message or 'your message'}. Shortname first, no slash; I pass it "
                 f"to {s}, and their reply comes back to you.")  # fmt: skip
        rows.append(_row("relay", q, reply))
    return rows


def _row(category: str, question: str, reply: str, channel: bool = False) -> dict:
    row = {"category": category, "source": SOURCE}
    if channel:
        row["channel"] = True
    turns = [{"from": "human", "value": question}, {"from": "gpt", "value": reply}]
    return {**row, "conversations": turns}


def build(train: Path = TRAIN, suite: Path = EVAL) -> tuple[list[str], int]:
    """The training file's lines with this script's rows made anew (the hand-written rows
    first, unchanged), and how many generated rows were dropped."""
    lines = [line for line in train.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line).get("source") != SOURCE]
    hand = [c for c in data.load_conversations(train) if c.meta.get("source") != SOURCE]
    taught = set(data.command_counts(hand, load_registry())[0])
    evals = [
        data.content_words(t)
        for item in map(json.loads, suite.read_text().splitlines())
        for t in _user_turns(item)
    ]
    asked = {data.prompt_key(c) for c in hand}
    rng = random.Random(SEED)
    rows = [*facts(rng), *pointers(rng), *usage(rng, taught), *relays(rng)]
    far = []
    for r in rows:  # far from every eval prompt, and a question no other row asks
        question = r["conversations"][0]["value"]
        if data.far_from(question, evals) and data.normalize(question) not in asked:
            far.append(r)
            asked.add(data.normalize(question))
    return [*kept, *(json.dumps(r, ensure_ascii=False) for r in far)], len(rows) - len(far)


def main() -> None:
    lines, dropped = build()
    write_text(TRAIN, "\n".join(lines) + "\n")
    made = sum(json.loads(line).get("source") == SOURCE for line in lines)
    print(f"{made} rows written ({dropped} too close to an eval prompt or asked already)")


def _user_turns(item: dict) -> list[str]:
    if "prompt" in item:
        return [item["prompt"]]
    return [t["content"] for t in item["messages"] if t["role"] == "user"]


if __name__ == "__main__":
    main()
