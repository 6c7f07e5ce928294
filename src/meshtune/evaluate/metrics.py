"""What is measured: per reply (length, radio chunks, runaway, loops, invented commands,
command dumps, the item's checks, speed) and across a suite (canned replies, pass rates,
length distribution).

A reply passes its item when the item's checks (expect_any, expect_all, forbid, max_chars,
allow_commands, stance; phrases match whole words, `re:` checks are regular expressions, see
suites.py) hold and it is not empty, a loop, a runaway, an invented-command, a wrong-command
or a command-dump reply. Each failure comes with a sentence saying what failed. An
item's pass rate is the share of its samples that pass; the suite's pass rate is the mean of
its items' pass rates.

A knowledge item (`/meshtastic` or a follow-up) is scored by whether its answer was delivered
to the model (delivery.py): delivered, its checks apply and the bot's refusal fails; not
delivered, the refusal is the only reply that passes.
"""

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from meshtune.commands import Registry
from meshtune.data import canned_replies, normalize, percentile
from meshtune.meshmaster import REFUSAL, split_chunks
from meshtune.suites import (
    KINDS,
    KNOWLEDGE_COMMAND,
    KNOWLEDGE_KINDS,
    REGEX_PREFIX,
    Item,
    check_pattern,
    matches,
)

# Loop detector thresholds. A reply loops when any of these holds:
LOOP_NGRAM_WORDS = 4  # a phrase of 4 words ...
LOOP_NGRAM_REPEATS = 3  # ... occurs 3 or more times;
LOOP_LINE_WORDS = 3  # a line of 3+ words ...
LOOP_LINE_REPEATS = 2  # ... occurs twice;
LOOP_SENTENCE_WORDS = 4  # a sentence of 4+ words ...
LOOP_SENTENCE_REPEATS = 2  # ... occurs twice;
LOOP_SPAN_CHARS = 8  # or a span of 8+ characters ...
LOOP_SPAN_REPEATS = 3  # ... repeats back to back 3+ times ("!!!!!!!!..." or "hahaha...").

CANNED_MIN_ITEMS = 3  # the same reply to this many different prompts is canned
TARGET_CHARS = (80, 150)  # the guide: "concise (80-150 chars typical)"

FAILURES = (
    "empty",
    "loop",
    "runaway",
    "invented-command",
    "wrong-command",
    "command-dump",
    "missing-expected",
    "missing-required",
    "wrong-stance",
    "forbidden",
    "too-long",
    "not-refused",
    "refused",
)

_WORD_RE = re.compile(r"[\w/'’-]+")
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_SPAN_RE = re.compile(rf"(.{{{LOOP_SPAN_CHARS},}}?)\1{{{LOOP_SPAN_REPEATS - 1},}}", re.DOTALL)
_CITATION_RE = re.compile(r"\[(\d+)\]")


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def loop_reason(text: str) -> str | None:
    """Why a reply counts as a loop (None when it does not), by the thresholds above."""
    words = _words(text)
    grams = Counter(
        tuple(words[i : i + LOOP_NGRAM_WORDS]) for i in range(len(words) - LOOP_NGRAM_WORDS + 1)
    )
    if grams:
        gram, n = grams.most_common(1)[0]
        if n >= LOOP_NGRAM_REPEATS:
            return f"the phrase '{' '.join(gram)}' occurs {n} times"
    lines = Counter(
        " ".join(_words(line)) for line in text.splitlines() if len(_words(line)) >= LOOP_LINE_WORDS
    )
    for line, n in lines.items():
        if n >= LOOP_LINE_REPEATS:
            return f"the line '{line}' occurs {n} times"
    sentences = Counter(
        " ".join(_words(s))
        for s in _SENTENCE_RE.split(text)
        if len(_words(s)) >= LOOP_SENTENCE_WORDS
    )
    for sentence, n in sentences.items():
        if n >= LOOP_SENTENCE_REPEATS:
            return f"the sentence '{sentence}' occurs {n} times"
    span = _SPAN_RE.search(text)
    if span:
        return f"'{span.group(1)}' repeats back to back"
    return None


def node_names(question: str) -> set[str]:
    """Node shortnames the question names (a word with a digit, or in capitals: VK3Z, mtn2,
    BRN): `/<shortname> <message>` is the bot's relay form, not an invented command."""
    words = re.findall(r"(?<![\w/])[A-Za-z0-9]{2,8}(?!\w)", question)
    return {w.lower() for w in words if any(c.isdigit() for c in w) or w.isupper()}


# How a reply opens its answer to a yes/no question ("Yes, ...", "Nope.", "It can't ...").
_SUBJECT = r"(it|that|this|you|they|i|there|the bot|he|she)('s| is| are)?"
_HEDGE = r"((usually|probably|generally|mostly|definitely|absolutely) )?"
_YES_RE = re.compile(
    rf"{_HEDGE}(yes|yeah|yep|yup|sure|correct|right|absolutely|definitely|of course|indeed|"
    rf"(a |it'?s a )?(good|great|solid|fine) (pick|choice|idea)|worth it|"
    rf"{_SUBJECT} (do|does|can|will|should|works?))\b",
    re.IGNORECASE,
)
_NO_RE = re.compile(
    rf"{_HEDGE}(no|nope|nah|not|never|negative|incorrect|wrong|"
    rf"(a |it'?s a )?(bad|poor) (pick|choice|idea)|not worth it|"
    rf"{_SUBJECT} (not|never|don't|doesn't|can't|cannot|can not|isn't|aren't|won't|"
    rf"shouldn't|does not|do not|will not|should not))\b",
    re.IGNORECASE,
)


def stance(reply: str) -> str | None:
    """The answer the reply's first words give, "yes" or "no"; None when they give neither."""
    opening = reply.replace("’", "'").lstrip(" \t\n\"'*-•>")
    if _NO_RE.match(opening):
        return "no"
    if _YES_RE.match(opening):
        return "yes"
    return None


def _shown(check: str) -> str:
    """A check as a person reads it in a failure reason: a phrase in quotes, a pattern with
    its word boundaries and escapes dropped (`re:\\b17\\.5` -> 17.5)."""
    if not check.startswith(REGEX_PREFIX):
        return f"'{check}'"
    pattern = check.removeprefix(REGEX_PREFIX).replace(r"\b", "").replace(r"\s+", " ")
    return re.sub(r"\\(\W)", r"\1", pattern.replace(r"\s", " "))


def _found(check: str, reply: str) -> str:
    """The words of the reply a (forbid) check matched."""
    m = check_pattern(check).search(reply)
    return m.group(0) if m else ""


def _commands(reply: str, item: Item, registry: Registry) -> tuple[list[str], list[str]]:
    """(invented, wrong): commands the bot does not have, and, where the item lists the
    commands a right answer may name (and `/meshtastic` on a technical DM item), every other
    command written as one (a real command for another job, or a relay target written
    `/vk3z`: relay is a plain DM)."""
    nodes = node_names(item.question)
    invented = sorted({m.written for m in registry.unknown(reply) if m.written[1:] not in nodes})
    if item.allow_commands is None:
        return invented, []
    allowed = {registry.canonical(a) or a for a in item.allow_commands}
    if item.technical:  # pointing to /meshtastic is its honest answer (see answer())
        allowed.add(KNOWLEDGE_COMMAND)
    named = {m.canonical or m.written: m.written for m in registry.mentions(reply)}
    wrong = sorted(w for c, w in named.items() if w not in invented and c not in allowed)
    return invented, wrong


def _reasons(
    item: Item, reply: str, failed: dict[str, Any], invented: list[str], wrong: list[str]
) -> list[str]:
    """One sentence per failure, saying what failed (the fact missing, the command and what
    the item allows, the stance, the false claim)."""
    allowed = ", ".join(item.allow_commands or ()) or "no command"
    texts = {
        "empty": lambda: "the reply is empty",
        "loop": lambda: f"loops: {failed['loop']}",
        "runaway": lambda: "ran into the token limit without ending its turn",
        "invented-command": lambda: f"invents {', '.join(invented)}: the bot has no such command",
        "wrong-command": lambda: (
            f"names {', '.join(wrong)}, not a command for this question "
            f"(a right answer names {allowed})"
        ),
        "command-dump": lambda: "lists commands instead of answering",
        "missing-expected": lambda: (
            "misses the answer: "
            + (item.need or "needs one of " + ", ".join(_shown(c) for c in item.expect_any))
        ),
        "missing-required": lambda: (
            "misses the answer: "
            + (item.need or "needs " + ", ".join(_shown(c) for c in failed["missing_all"]))
        ),
        "wrong-stance": lambda: (
            f"answers {failed['stance'] or 'neither yes nor no'}; the right answer is {item.stance}"
        ),
        "forbidden": lambda: (
            "says "
            + ", ".join(f"'{_found(c, reply)}'" for c in failed["forbidden"])
            + ", which is false or banned for this question"
        ),
        "too-long": lambda: f"{len(reply)} characters, over the item's {item.max_chars}",
        "not-refused": lambda: (
            "the excerpts the model saw do not hold the answer, so the only right reply is "
            f"the bot's '{REFUSAL}'"
        ),
        "refused": lambda: "refuses, though the excerpts the model saw hold the answer",
    }
    return [texts[f]() for f in FAILURES if failed[f]]


# What keeps a pointer to /meshtastic from counting as one: a false or banned claim, a yes or
# no given wrongly, a command other than /meshtastic, or a reply that is broken as a message.
_NOT_A_POINTER = ("empty", "loop", "runaway", "invented-command", "command-dump", "forbidden",
                  "too-long")  # fmt: skip


def answer(item: Item, reply: str, failed: dict[str, Any], wrong: list[str]) -> str | None:
    """A technical DM item's reply, three ways: "correct" (it passes), "pointer" (it sends the
    user to `/meshtastic` and states nothing false) or "wrong"; None for other items."""
    if not item.technical:
        return None
    if not any(failed[f] for f in FAILURES):
        return "correct"
    pointer = (
        KNOWLEDGE_COMMAND in reply.lower()
        and not any(failed[f] for f in _NOT_A_POINTER)
        and not wrong
        and (item.stance is None or failed["stance"] in (None, item.stance))
    )
    return "pointer" if pointer else "wrong"


def is_refusal(reply: str) -> bool:
    """Whether a reply is the bot's refusal sentence. Case, curly apostrophes, enclosing
    quotes (the prompt quotes the sentence) and the final period are not read: the user gets
    the same sentence. Anything more (a fact, a citation, an apology) is not the refusal."""
    return _plain(reply) == _plain(REFUSAL)


def _plain(text: str) -> str:
    return text.replace("’", "'").strip().strip("\"'“”‘").strip().rstrip(".").casefold()


def mentions_refusal(reply: str) -> bool:
    """Whether the refusal sentence is anywhere in the reply: beside an answer it contradicts
    it ("Since firmware 2.5, I don't have enough MeshTastic data for that.")."""
    return _plain(REFUSAL) in _plain(reply)


def cites(reply: str, excerpts: int) -> bool:
    """Whether the reply cites the excerpts as the bot asks: at least one `[n]`, each n
    among the excerpts given."""
    numbers = [int(n) for n in _CITATION_RE.findall(reply)]
    return bool(numbers) and all(1 <= n <= excerpts for n in numbers)


def measure(
    text: str,
    finish_reason: str,
    item: Item,
    registry: Registry,
    completion_tokens: int | None = None,
    seconds: float | None = None,
    delivered: bool | None = None,
    excerpts: int = 0,
) -> dict[str, Any]:
    """Every per-reply metric, the failures (codes) and their reasons (sentences); both
    empty when the reply passes. For a knowledge item, `delivered` says whether its answer
    reached the model (delivery.py; None: not measured, taken as delivered when the item has
    facts) and `excerpts` how many excerpts the request gave."""
    reply = text.strip()
    invented, wrong = _commands(reply, item, registry)
    loop = loop_reason(reply)
    knowledge = item.kind in KNOWLEDGE_KINDS
    refused = knowledge and is_refusal(reply)
    # Not delivered, the model cannot have read the answer: the only right reply is the
    # refusal, and a fact it states is not checked against the item (it was not supported).
    checked = not knowledge or (bool(item.facts) and delivered is not False)
    missing_all = [s for s in item.expect_all if not matches(s, reply)] if checked else []
    forbidden = [s for s in item.forbid if matches(s, reply)] if checked else []
    said = stance(reply)
    failed = {
        "empty": not reply,
        "loop": loop,
        "runaway": finish_reason == "length",
        "invented-command": invented,
        "wrong-command": wrong,
        "command-dump": registry.is_command_dump(reply),
        "missing-expected": checked
        and bool(item.expect_any)
        and not any(matches(s, reply) for s in item.expect_any),
        "missing-required": bool(missing_all),
        "missing_all": missing_all,
        "wrong-stance": checked and item.stance is not None and said != item.stance,
        "stance": said,
        "forbidden": forbidden,
        "too-long": len(reply) > item.max_chars,
        "not-refused": knowledge and not checked and not refused,
        "refused": knowledge and checked and mentions_refusal(reply),
    }
    failures = [f for f in FAILURES if failed[f]]
    tps = (
        round(completion_tokens / seconds, 1)
        if completion_tokens and seconds and seconds > 0
        else None
    )
    return {
        "chars": len(reply),
        "bytes": len(reply.encode()),
        "chunks": len(split_chunks(reply)),
        "finish_reason": finish_reason,
        "runaway": failed["runaway"],
        "loop": loop,
        "invented_commands": invented,
        "wrong_commands": wrong,
        "command_dump": failed["command-dump"],
        "missing_all": missing_all,
        "forbidden": forbidden,
        "failures": failures,
        "reasons": _reasons(item, reply, failed, invented, wrong),
        "passed": not failures,
        "answer": answer(item, reply, failed, wrong),
        "delivered": (checked if delivered is None else delivered) if knowledge else None,
        "refused": refused if knowledge else None,
        "cited": cites(reply, excerpts) if knowledge else None,
        "tokens": completion_tokens,
        "latency_s": round(seconds, 3) if seconds is not None else None,
        "tokens_per_s": tps,
    }


def mark_canned(rows: Sequence[dict[str, Any]]) -> None:
    """Set row["canned"]: the same reply (case, spacing and punctuation ignored) was given to
    CANNED_MIN_ITEMS or more different items. The refusal to a knowledge item is not canned:
    the bot's prompt demands that one sentence word for word."""
    canned = canned_replies(((r["reply"], r["item"]) for r in rows), CANNED_MIN_ITEMS)
    for r in rows:
        r["canned"] = normalize(r["reply"]) in canned and not r.get("refused")


def _share(flags: Sequence[bool]) -> float:
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def item_pass_rates(rows: Sequence[dict[str, Any]]) -> dict[str, float]:
    passed: dict[str, list[bool]] = defaultdict(list)
    for r in rows:
        passed[r["item"]].append(r["passed"])
    return {item: sum(v) / len(v) for item, v in passed.items()}


def summarize(rows: Sequence[dict[str, Any]], generation_s: float | None = None) -> dict[str, Any]:
    """Suite-level numbers from reply rows (each row: item, category, kind, reply and
    measure()'s keys, canned set by mark_canned), for the whole suite and again for each
    request kind the suite holds (`kinds`), with the technical DM replies' three-way split
    (`technical`). tokens/s is the generated tokens over `generation_s`, the wall time spent
    generating (samples decoded together overlap), else over the sum of reply latencies."""
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_kind[r.get("kind", "dm")].append(r)  # reports written before kinds were DMs' only
    return {
        **_figures(rows, generation_s),
        "kinds": {k: _figures(by_kind[k]) for k in KINDS if by_kind[k]},
        "technical": technical_split(rows),
        "knowledge": knowledge_figures(rows),
    }


def knowledge_figures(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per knowledge kind (`/meshtastic`, follow-up): the mean pass rate of the items whose
    answer was delivered, with the share of their replies citing an excerpt given, and the
    share of replies to the other items that are the refusal."""
    figures = {}
    for kind in KNOWLEDGE_KINDS:
        scored = [r for r in rows if r.get("kind") == kind and r.get("delivered") is not None]
        if not scored:
            continue  # none, or a report written before delivery was measured
        got = [r for r in scored if r["delivered"]]
        missed = [r for r in scored if not r["delivered"]]
        rates = item_pass_rates(got)
        figures[kind] = {
            "delivered": {
                "items": len(rates),
                "replies": len(got),
                "pass_rate": round(statistics.fmean(rates.values()), 4) if rates else None,
                "citation_rate": _share([r["cited"] for r in got]) if got else None,
            },
            "undelivered": {
                "items": len({r["item"] for r in missed}),
                "replies": len(missed),
                "refusal_rate": _share([r["refused"] for r in missed]) if missed else None,
            },
        }
    return figures


def technical_split(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How the technical DM replies answered: correct, a pointer to /meshtastic, or wrong."""
    answers = [r["answer"] for r in rows if r.get("answer")]
    shares = {a: _share([x == a for x in answers]) for a in ("correct", "pointer", "wrong")}
    return {"replies": len(answers), **shares}


def _figures(rows: Sequence[dict[str, Any]], generation_s: float | None = None) -> dict[str, Any]:
    chars = [r["chars"] for r in rows]
    per_item = item_pass_rates(rows)
    category_of = {r["item"]: r["category"] for r in rows}
    by_cat: dict[str, list[float]] = defaultdict(list)
    for item, rate in per_item.items():
        by_cat[category_of[item]].append(rate)
    tokens = sum(r["tokens"] or 0 for r in rows)
    gen_seconds = generation_s or sum(r["latency_s"] or 0 for r in rows)
    latencies = [r["latency_s"] for r in rows if r["latency_s"] is not None]
    failures = Counter(f for r in rows for f in r["failures"])
    return {
        "items": len(per_item),
        "replies": len(rows),
        "pass_rate": round(statistics.fmean(per_item.values()), 4) if per_item else 0.0,
        "items_always_pass": sum(rate == 1 for rate in per_item.values()),
        "items_never_pass": sum(rate == 0 for rate in per_item.values()),
        "categories": {
            cat: {"items": len(rates), "pass_rate": round(statistics.fmean(rates), 4)}
            for cat, rates in sorted(by_cat.items())
        },
        "loop_rate": _share([r["loop"] is not None for r in rows]),
        "runaway_rate": _share([r["runaway"] for r in rows]),
        "invented_command_rate": _share([bool(r["invented_commands"]) for r in rows]),
        "wrong_command_rate": _share([bool(r.get("wrong_commands")) for r in rows]),
        "command_dump_rate": _share([r["command_dump"] for r in rows]),
        "canned_rate": _share([r.get("canned", False) for r in rows]),
        "empty_rate": _share([not r["reply"].strip() for r in rows]),
        "failures": {f: failures[f] for f in FAILURES if failures[f]},
        "invented_commands": dict(
            Counter(c for r in rows for c in r["invented_commands"]).most_common()
        ),
        "wrong_commands": dict(
            Counter(c for r in rows for c in r.get("wrong_commands", [])).most_common()
        ),
        "chars": {
            "p50": percentile(chars, 50),
            "p90": percentile(chars, 90),
            "max": float(max(chars, default=0)),
            "mean": round(statistics.fmean(chars), 1) if chars else 0.0,
        },
        "share_80_150_chars": _share([TARGET_CHARS[0] <= c <= TARGET_CHARS[1] for c in chars]),
        "share_one_chunk": _share([r["chunks"] == 1 for r in rows]),
        "chunks": {str(k): v for k, v in sorted(Counter(r["chunks"] for r in rows).items())},
        "latency_s": {"p50": percentile(latencies, 50), "p90": percentile(latencies, 90)},
        "tokens": tokens,
        "generation_s": round(gen_seconds, 1),
        "tokens_per_s": round(tokens / gen_seconds, 1) if gen_seconds else None,
    }
