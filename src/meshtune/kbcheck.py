"""`meshtune kb check`: does the bot's knowledge path hand the model the facts a `/meshtastic`
question needs?

For each knowledge item of a suite (a `/meshtastic QUESTION` prompt whose expect_all checks,
and its expect_any group, are the facts a right answer needs), the bot's own retrieval builds
the request; a fact is *retrieved* when one of the excerpts holds it, and *seen* when it is
still in what Ollama leaves of the request at num_ctx (meshmaster.truncation). An item is a
hit when every fact is seen.
"""

from dataclasses import dataclass
from typing import Any

from text_unidecode import unidecode

from meshtune import meshmaster
from meshtune.errors import MeshtuneError
from meshtune.meshmaster.truncation import model_view
from meshtune.suites import Item, Suite, matches


@dataclass(frozen=True, slots=True)
class Fact:
    """One required fact (any of its alternatives), where it was found and whether it stays."""

    alternatives: tuple[str, ...]
    excerpt: int | None  # the first excerpt (1-based) holding it; None: not retrieved
    seen: bool  # still in what the model sees

    @property
    def where(self) -> str:
        if self.excerpt is None:
            return "not retrieved"
        return f"in [{self.excerpt}], " + ("seen" if self.seen else "cut by Ollama's truncation")

    def to_dict(self) -> dict[str, Any]:
        return {"fact": " | ".join(self.alternatives), "excerpt": self.excerpt, "seen": self.seen}


@dataclass(frozen=True, slots=True)
class ItemCheck:
    id: str
    query: str
    titles: list[str]
    facts: list[Fact]
    prompt_tokens: int  # of the whole request, as the model's template renders it
    seen_tokens: int

    @property
    def retrieved(self) -> bool:
        return all(f.excerpt is not None for f in self.facts)

    @property
    def hit(self) -> bool:
        return all(f.seen for f in self.facts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "query": self.query,
            "hit": self.hit,
            "retrieved": self.retrieved,
            "titles": self.titles,
            "prompt_tokens": self.prompt_tokens,
            "seen_tokens": self.seen_tokens,
            "facts": [f.to_dict() for f in self.facts],
        }


@dataclass(frozen=True, slots=True)
class KbCheck:
    knowledge: str
    suite: str
    num_ctx: int
    items: list[ItemCheck]

    @property
    def hit_rate(self) -> float:
        return sum(i.hit for i in self.items) / len(self.items)

    @property
    def retrieved_rate(self) -> float:
        return sum(i.retrieved for i in self.items) / len(self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "knowledge": self.knowledge,
            "suite": self.suite,
            "num_ctx": self.num_ctx,
            "items": len(self.items),
            "hit_rate": round(self.hit_rate, 4),
            "retrieved_rate": round(self.retrieved_rate, 4),
            "results": [i.to_dict() for i in self.items],
        }

    def render(self) -> str:
        lines = []
        for i in self.items:
            lines.append(f"{'HIT ' if i.hit else 'MISS'} {i.id}: {i.query}")
            lines.append(f"     retrieved: {'; '.join(i.titles) or 'nothing'}")
            lines.append(f"     tokens: {i.prompt_tokens}, the model sees {i.seen_tokens}")
            lines += [f"     {' | '.join(f.alternatives)}: {f.where}" for f in i.facts]
        hits = sum(i.hit for i in self.items)
        retrieved = sum(i.retrieved for i in self.items)
        lines.append(
            f"{self.knowledge} on {self.suite} at num_ctx {self.num_ctx}: hit rate "
            f"{hits}/{len(self.items)} = {self.hit_rate:.0%} (every fact retrieved: "
            f"{retrieved}/{len(self.items)} = {self.retrieved_rate:.0%})"
        )
        return "\n".join(lines)


def knowledge_items(suite: Suite) -> list[Item]:
    items = [i for i in suite.items if meshmaster.uses_knowledge(i.question) and _facts_of(i)]
    if not items:
        raise MeshtuneError(
            f"{suite.path}: no knowledge items (a `/meshtastic QUESTION` prompt with "
            "expect_all or expect_any facts); use --suite knowledge"
        )
    return items


def check(
    knowledge: meshmaster.Knowledge,
    suite: Suite,
    config: meshmaster.BotConfig,
    tokenizer: Any,
    system: str,
) -> KbCheck:
    """Every knowledge item of `suite` through the bot's retrieval and Ollama's cut at the
    config's num_ctx, with `tokenizer` (the model's) and its deployment `system` prompt."""
    results = [_check_item(i, knowledge, config, tokenizer, system) for i in knowledge_items(suite)]
    return KbCheck(str(knowledge.path), suite.name, config.num_ctx, results)


def _check_item(
    item: Item,
    knowledge: meshmaster.Knowledge,
    config: meshmaster.BotConfig,
    tokenizer: Any,
    system: str,
) -> ItemCheck:
    request = meshmaster.build_request(item.question, config, knowledge=knowledge)
    query = request.question
    chunks = knowledge.search(query, config.kb_max_chars)
    if request.reply is not None:  # nothing matched: the bot answers without the model
        facts = [Fact(alts, None, False) for alts in _facts_of(item)]
        return ItemCheck(item.id, query, [], facts, 0, 0)
    cut = model_view(tokenizer, system, request.prompt, config.num_ctx)
    seen = tokenizer.decode(cut.tokens)
    # The question's own words are no evidence: only the excerpts before it count.
    question = seen.rfind(f"Question: {unidecode(query)}")
    seen = seen[:question] if question >= 0 else seen
    facts = []
    for alts in _facts_of(item):
        found = next(
            (n for n, c in enumerate(chunks, 1) if any(matches(a, c.text) for a in alts)), None
        )
        facts.append(Fact(alts, found, found is not None and any(matches(a, seen) for a in alts)))
    titles = [c.title for c in chunks]
    return ItemCheck(item.id, query, titles, facts, cut.total, len(cut.tokens))


def _facts_of(item: Item) -> list[tuple[str, ...]]:
    """Each expect_all check is a fact; the expect_any checks are one (any of them)."""
    facts = [(check,) for check in item.expect_all]
    return [*facts, item.expect_any] if item.expect_any else facts
