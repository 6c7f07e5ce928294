"""The `mesh` suite's knowledge items and meshtune's knowledge file, checked against each other.

An answerable item (a `/meshtastic` question or a reference-mode follow-up with facts) has
every fact in the file, and the bot's retrieval hands it to the model whole at the shipped
num_ctx 1024. An item the file cannot answer has no facts (its only right reply is the bot's
refusal); its forbidden claims are what a reply would have to invent, and no section of the
file holds them.
"""

import pytest

from meshtune import kbcheck, meshmaster
from meshtune.meshmaster.truncation import model_view
from meshtune.suites import Item, load_suite, matches

REFUSAL = "I don't have enough MeshTastic data for that."  # what the bot's knowledge prompt demands
KNOWLEDGE = meshmaster.own_knowledge()
ITEMS = [i for i in load_suite("mesh").items if i.kind in ("/meshtastic", "follow-up")]
ANSWERABLE = [i for i in ITEMS if i.expect_all or i.expect_any]
REFUSED = [i for i in ITEMS if not (i.expect_all or i.expect_any)]
FOLLOW_UPS = [i for i in ANSWERABLE if i.kind == "follow-up"]


def facts(item: Item) -> list[tuple[str, ...]]:
    """Each expect_all check is a fact; the expect_any checks together are one."""
    return [*((c,) for c in item.expect_all), *([item.expect_any] if item.expect_any else [])]


def opening_question(item: Item) -> str:
    """The `/meshtastic` question whose excerpts the item is answered from."""
    opening = next(t.content for t in item.turns if t.content.startswith("/meshtastic "))
    return opening.removeprefix("/meshtastic ")


def test_the_suite_asks_60_answerable_meshtastic_questions_20_follow_ups_and_some_refusals():
    asked = [i for i in ANSWERABLE if i.kind == "/meshtastic"]
    assert len(asked) >= 60 and len(FOLLOW_UPS) >= 20
    assert 10 <= len(REFUSED) <= len(ITEMS) // 5
    assert any(i.kind == "follow-up" for i in REFUSED)
    for item in ITEMS:
        assert item.allow_commands is not None and item.good and item.bad, item.id
    for item in REFUSED:
        assert item.good == REFUSAL and item.forbid, item.id


@pytest.mark.parametrize("item", ANSWERABLE, ids=lambda i: i.id)
def test_every_fact_of_an_answerable_item_is_in_the_knowledge_file(item):
    for alternatives in facts(item):
        holding = [c for c in KNOWLEDGE.chunks if any(matches(a, c.text) for a in alternatives)]
        assert holding, f"{item.id}: no section of the knowledge file holds {alternatives}"


@pytest.mark.parametrize("item", REFUSED, ids=lambda i: i.id)
def test_no_section_holds_what_a_refusal_items_answer_would_claim(item):
    for claim in item.forbid:
        holding = [c.title for c in KNOWLEDGE.chunks if matches(claim, c.text)]
        assert holding == [], f"{item.id}: {claim} is in {holding}; the item is answerable"
    assert any(matches(claim, item.bad) for claim in item.forbid)


def test_the_bots_retrieval_delivers_every_meshtastic_items_facts_at_num_ctx_1024(smol_tokenizer):
    system = meshmaster.DEFAULT_SYSTEM_PROMPT
    suite = load_suite("mesh")
    report = kbcheck.check(KNOWLEDGE, suite, meshmaster.SHIPPED, smol_tokenizer, system).to_dict()
    assert report["num_ctx"] == 1024
    asked = {i.id for i in ANSWERABLE if i.kind == "/meshtastic"}
    assert asked <= {r["id"] for r in report["results"]}
    assert [r["id"] for r in report["results"] if not r["hit"]] == []


@pytest.mark.parametrize("item", FOLLOW_UPS, ids=lambda i: i.id)
def test_a_follow_ups_facts_reach_the_model_in_its_reference_mode_excerpts(item, smol_tokenizer):
    chunks = KNOWLEDGE.search(opening_question(item), meshmaster.SHIPPED.kb_max_chars)
    turns = [(t.role, t.content) for t in item.turns]
    prompt = meshmaster.chat_prompt(turns, meshmaster.SHIPPED, knowledge=KNOWLEDGE)
    seen = smol_tokenizer.decode(
        model_view(smol_tokenizer, meshmaster.DEFAULT_SYSTEM_PROMPT, prompt, 1024).tokens
    )
    before_question = seen[: seen.rfind(f"Question: {item.question}")]
    for alternatives in facts(item):
        assert any(matches(a, c.text) for a in alternatives for c in chunks), alternatives
        assert any(matches(a, before_question) for a in alternatives), alternatives
