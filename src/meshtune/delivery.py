"""Whether the bot's knowledge path delivers an item's answer to the model.

A knowledge item (a `/meshtastic` question or a reference-mode follow-up, see suites.py) needs
facts: its expect_all checks, and its expect_any group. The bot's request is built for the
item with its retrieval from the knowledge file; a fact is *retrieved* when one of the
excerpts holds it, and *seen* when it is still in what Ollama's cut at num_ctx leaves of the
request (meshmaster.truncation), before the question. The answer is *delivered* when every
fact is seen. `meshtune kb check` reports this per item; the evaluation scores a knowledge
item's replies by it (a reply to an undelivered item must be the bot's refusal).
"""

import sys
from dataclasses import dataclass
from typing import Any

from text_unidecode import unidecode

from meshtune import meshmaster
from meshtune.meshmaster.truncation import model_view
from meshtune.suites import KNOWLEDGE_KINDS, Item, matches

# The tokenizer that counts where the evaluated model brings none of its own (a served model).
FALLBACK_TOKENIZER = "smollm2-135m"


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
class Delivery:
    """One knowledge item's request: the excerpts retrieved, each fact, the tokens."""

    id: str
    query: str  # the /meshtastic question the excerpts were retrieved for
    titles: list[str]  # the excerpts' titles, [1] first
    facts: list[Fact]
    prompt_tokens: int  # of the whole request, as the model's template renders it
    seen_tokens: int

    @property
    def retrieved(self) -> bool:
        return all(f.excerpt is not None for f in self.facts)

    @property
    def delivered(self) -> bool:
        """Every fact is in what the model sees; never for an item without facts."""
        return bool(self.facts) and all(f.seen for f in self.facts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "query": self.query,
            "hit": self.delivered,
            "retrieved": self.retrieved,
            "titles": self.titles,
            "prompt_tokens": self.prompt_tokens,
            "seen_tokens": self.seen_tokens,
            "facts": [f.to_dict() for f in self.facts],
        }


def knowledge_query(item: Item) -> str:
    """The question the bot retrieves excerpts for: the item's `/meshtastic` question, or the
    one that started the reference mode a follow-up is asked in."""
    for turn in reversed(item.turns):
        words = turn.content.split(maxsplit=1)
        if turn.role == "user" and words and words[0].lower() == meshmaster.KNOWLEDGE_COMMAND:
            return words[1].strip() if len(words) > 1 else ""
    raise ValueError(f"{item.id}: not a knowledge item (no /meshtastic question)")


def deliver(
    item: Item,
    knowledge: meshmaster.Knowledge | None,
    config: meshmaster.BotConfig,
    tokenizer: Any,
    system: str,
    num_ctx: int | None,
) -> Delivery:
    """The bot's request for a knowledge item (built from `knowledge`; None: the request goes
    without excerpts), rendered with `tokenizer` after the deployment `system` prompt and cut
    at `num_ctx` (None: the backend hands the model the whole prompt)."""
    if item.kind not in KNOWLEDGE_KINDS:
        raise ValueError(f"{item.id}: a {item.kind} item, not a knowledge item")
    query = knowledge_query(item)
    chunks = knowledge.search(query, config.kb_max_chars) if knowledge and query else []
    if not chunks:  # no excerpts: the bot answers by itself, or the model gets none
        return Delivery(item.id, query, [], [Fact(a, None, False) for a in item.facts], 0, 0)
    turns = [(t.role, t.content) for t in item.turns if t.role != "system"]
    prompt = meshmaster.chat_prompt(turns, config, channel=item.channel, knowledge=knowledge)
    cut = model_view(tokenizer, system, prompt, num_ctx or sys.maxsize)
    seen = tokenizer.decode(cut.tokens)
    # The question's own words are no evidence: only what comes before it counts.
    asked = query if item.kind == "/meshtastic" else item.question
    question = seen.rfind(f"Question: {unidecode(asked)}")
    seen = seen[:question] if question >= 0 else seen
    facts = []
    for alts in item.facts:
        found = next(
            (n for n, c in enumerate(chunks, 1) if any(matches(a, c.text) for a in alts)), None
        )
        facts.append(Fact(alts, found, found is not None and any(matches(a, seen) for a in alts)))
    titles = [c.title for c in chunks]
    return Delivery(item.id, query, titles, facts, cut.total, len(cut.tokens))


def model_tokenizer(spec: Any) -> tuple[Any, str]:
    """The tokenizer of a resolved model (evaluate.backends.ModelSpec) and its name: a run's
    base model's, a local model's own, else (a served model) the embedded model's, so a
    delivery is still counted, and the name says with what."""
    from transformers import AutoTokenizer

    from meshtune import models, rundir

    name = rundir.load_trained(spec.run_dir).base_model if spec.run_dir else spec.hf_name
    name = str(name or FALLBACK_TOKENIZER)
    return AutoTokenizer.from_pretrained(models.resolve(name).folder), name
