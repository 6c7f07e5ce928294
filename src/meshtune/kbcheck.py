"""`meshtune kb check`: does the bot's knowledge path hand the model the facts a `/meshtastic`
question needs?

For each knowledge item of a suite (a `/meshtastic QUESTION` prompt, or a follow-up in its
reference mode, whose expect_all checks, and its expect_any group, are the facts a right answer
needs), whether each fact is retrieved and still seen after Ollama's cut at num_ctx
(delivery.py). An item is a hit when its answer is delivered: every fact seen."""

from dataclasses import dataclass
from typing import Any

from meshtune import meshmaster
from meshtune.delivery import Delivery, deliver
from meshtune.errors import MeshtuneError
from meshtune.suites import KNOWLEDGE_KINDS, Item, Suite


@dataclass(frozen=True, slots=True)
class KbCheck:
    knowledge: str
    suite: str
    num_ctx: int
    items: list[Delivery]

    @property
    def hit_rate(self) -> float:
        return sum(i.delivered for i in self.items) / len(self.items)

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
            lines.append(f"{'HIT ' if i.delivered else 'MISS'} {i.id}: {i.query}")
            lines.append(f"     retrieved: {'; '.join(i.titles) or 'nothing'}")
            lines.append(f"     tokens: {i.prompt_tokens}, the model sees {i.seen_tokens}")
            lines += [f"     {' | '.join(f.alternatives)}: {f.where}" for f in i.facts]
        hits = sum(i.delivered for i in self.items)
        retrieved = sum(i.retrieved for i in self.items)
        lines.append(
            f"{self.knowledge} on {self.suite} at num_ctx {self.num_ctx}: hit rate "
            f"{hits}/{len(self.items)} = {self.hit_rate:.0%} (every fact retrieved: "
            f"{retrieved}/{len(self.items)} = {self.retrieved_rate:.0%})"
        )
        return "\n".join(lines)


def knowledge_items(suite: Suite) -> list[Item]:
    items = [i for i in suite.items if i.kind in KNOWLEDGE_KINDS and i.facts]
    if not items:
        raise MeshtuneError(
            f"{suite.path}: no knowledge items (a `/meshtastic QUESTION` prompt, or a follow-up "
            "in its reference mode, with expect_all or expect_any facts); use --suite knowledge"
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
    results = [
        deliver(i, knowledge, config, tokenizer, system, config.num_ctx)
        for i in knowledge_items(suite)
    ]
    return KbCheck(str(knowledge.path), suite.name, config.num_ctx, results)
