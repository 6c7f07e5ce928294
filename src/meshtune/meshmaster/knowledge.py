"""Mesh Master's Meshtastic knowledge file and the bot's retrieval from it, as `/meshtastic`
uses them.

The file is split at `## ` headings (a leading `# ` title is skipped); each section's
paragraphs are merged while the result stays within 900 characters, a longer paragraph is cut
into 900-character slices, and every chunk keeps its section title. A question is scored
against every chunk on its `[a-z0-9]+` words (transliterated, lowercased): twice each word's
count, 1.5 more for a word of the title, 0.75 per distinct word found, 3 when the whole question
appears in the chunk, all divided by 1 + log1p(the chunk's length); the best chunks are taken
while their lengths fit `meshtastic_kb_max_context_chars` (at most 5, at least the best one).
"""

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from text_unidecode import unidecode

from meshtune.errors import MeshtuneError
from meshtune.files import input_file, read_text
from meshtune.meshmaster.config import BotConfig

# The one reply the bot's knowledge prompt allows when the excerpts do not hold the answer.
REFUSAL = "I don't have enough MeshTastic data for that."
# The bot's system prompt for every `/meshtastic` request and reference-mode follow-up; it
# replaces the config's prompt and the persona.
KNOWLEDGE_SYSTEM_PROMPT = (
    "You are Mesh-Master, a safety-critical assistant for the Meshtastic project. "
    "Answer ONLY when the supplied MeshTastic reference passages clearly support the "
    "conclusion. Quote configuration values precisely, prefer step-by-step instructions when "
    "relevant, and stay concise. If the references do not contain the answer, reply exactly: "
    f"'{REFUSAL}'"
)
EXCERPTS_HEADER = "MeshTastic reference excerpts (authoritative):"
EXCERPTS_INSTRUCTIONS = (
    "Instructions: Use these excerpts as your primary source. You may use general knowledge "
    "about Meshtastic and LoRa if needed to fill gaps, but prioritize the excerpts. If you "
    "truly don't know, say so."
)
CITE_INSTRUCTIONS = "Provide a concise answer. Cite supporting excerpt numbers in square brackets."
# The bot's reply, without a model call, when no chunk shares a word with the question.
NO_MATCH_REPLY = "No matching MeshTastic references found. Refine your question and try again."

CHUNK_CHARS = 900
MAX_EXCERPTS = 5

# meshtune's own knowledge file, written for this retriever (short sections titled the way
# people ask, their key words in the text, one fact family each); export ships it with a model.
OWN_KNOWLEDGE = Path(__file__).resolve().parents[1] / "assets" / "meshtastic_knowledge.txt"


@dataclass(frozen=True, slots=True)
class Chunk:
    title: str
    text: str
    terms: Counter[str] = field(compare=False, repr=False)
    title_terms: frozenset[str] = field(compare=False, repr=False)

    def score(self, query_terms: list[str], query_lower: str) -> float:
        score, distinct = 0.0, 0
        for term in query_terms:  # every occurrence counts, as in the bot
            count = self.terms.get(term, 0)
            if count:
                score += count * 2.0
                distinct += 1
                if term in self.title_terms:
                    score += 1.5
        score += distinct * 0.75
        if query_lower in self.text.lower():
            score += 3.0
        return score / (1.0 + math.log1p(len(self.text))) if score > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Knowledge:
    """A knowledge file as the bot holds it: its chunks, in file order."""

    path: Path
    chunks: tuple[Chunk, ...]

    def search(self, query: str, max_chars: int) -> list[Chunk]:
        """The chunks the bot hands the model for `query`, best first; [] when none matches."""
        query_terms = terms(query)
        if not query_terms:
            return []
        query_lower = unidecode(query.lower())
        scored = [(c.score(query_terms, query_lower), c) for c in self.chunks]
        ranked = sorted((s for s in scored if s[0] > 0), key=lambda s: s[0], reverse=True)
        picked: list[Chunk] = []
        total = 0
        for _, chunk in ranked:
            if len(picked) >= MAX_EXCERPTS:
                break
            if picked and total + len(chunk.text) > max_chars:
                continue  # a later, shorter chunk may still fit
            picked.append(chunk)
            total += len(chunk.text)
        return picked


def terms(text: str) -> list[str]:
    """The words the bot's retrieval compares: `[a-z0-9]+` of the transliterated text."""
    return re.findall(r"[a-z0-9]+", unidecode(text.lower()))


def load_knowledge(path: Path) -> Knowledge:
    return parse_knowledge(read_text(path), path)


@cache
def own_knowledge() -> Knowledge:
    """meshtune's own knowledge file, the one `export` installs beside the Modelfile: training
    rows and eval items sent as `/meshtastic` (or in its reference mode) are built from it."""
    return load_knowledge(OWN_KNOWLEDGE)


def open_knowledge(given: Path | None, config: BotConfig) -> Knowledge:
    """The knowledge file `given` (--knowledge), else the config's meshtastic_knowledge_file."""
    path = given or config.knowledge_file
    if path is None:
        raise MeshtuneError(
            "this needs the bot's Meshtastic knowledge file: give it with --knowledge FILE (or "
            "--mesh-master-config, whose meshtastic_knowledge_file is used)"
        )
    if not input_file(path, "a knowledge file").is_file():
        where = "--knowledge" if given else f"meshtastic_knowledge_file of {config.source}"
        raise MeshtuneError(f"{path}: no such knowledge file ({where}); fix the path")
    return load_knowledge(path)


def parse_knowledge(raw: str, path: Path) -> Knowledge:
    chunks = []
    for title, body in _sections(raw):
        for text in _split(body):
            words = terms(text)
            if words:  # the bot drops chunks without a word
                chunks.append(Chunk(title, text, Counter(words), frozenset(terms(title))))
    return Knowledge(path, tuple(chunks))


def excerpts(chunks: list[Chunk]) -> str:
    """The numbered excerpt block the bot sends, with its header and instructions."""
    numbered = "\n\n".join(f"[{n}] {c.title}\n{c.text.strip()}" for n, c in enumerate(chunks, 1))
    return f"{EXCERPTS_HEADER}\n{numbered}\n\n{EXCERPTS_INSTRUCTIONS}"


def _sections(raw: str) -> list[tuple[str, str]]:
    sections: list[tuple[str, str]] = []
    title, lines = "Overview", []
    for line in raw.splitlines():
        if line.startswith("## "):
            if lines:
                sections.append((title, "\n".join(lines).strip()))
            title, lines = line[3:].strip() or title, []
        elif line.startswith("# ") and not sections and not lines:
            continue  # the document's title
        else:
            lines.append(line)
    if lines:
        sections.append((title, "\n".join(lines).strip()))
    return sections


def _split(body: str) -> list[str]:
    """A section's chunks: paragraphs merged up to 900 characters, longer ones sliced."""
    out, buffer = [], ""
    for paragraph in (p.strip() for p in body.split("\n\n")):
        if not paragraph:
            continue
        candidate = f"{buffer}\n\n{paragraph}" if buffer else paragraph
        if len(candidate) <= CHUNK_CHARS:
            buffer = candidate
            continue
        if buffer:
            out.append(buffer)
        buffer = ""
        if len(paragraph) <= CHUNK_CHARS:
            buffer = paragraph
        else:
            slices = (
                paragraph[i : i + CHUNK_CHARS].strip()
                for i in range(0, len(paragraph), CHUNK_CHARS)
            )
            out.extend(s for s in slices if s)
    if buffer:
        out.append(buffer)
    return out
