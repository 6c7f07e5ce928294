"""The knowledge path's training rows (data/mesh_knowledge.jsonl, issue 21): every answer is
true to the excerpts the model sees of the bot's request, as training renders and cuts it."""

import importlib.util
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from meshtune import data
from meshtune.chat import IGNORE
from meshtune.meshmaster import KNOWLEDGE_COMMAND, own_knowledge
from meshtune.recipe import MeshMasterRequests, Recipe
from meshtune.rendering import render
from meshtune.suites import load_suite
from meshtune.train.examples import encode_all

DATA = Path(__file__).resolve().parents[1] / "data"
ROWS = DATA / "mesh_knowledge.jsonl"
SUITES = (DATA / "eval" / "mesh_eval.jsonl", DATA / "eval" / "knowledge_eval.jsonl")
NO_DATA = "I don't have enough MeshTastic data for that."
CITATION = re.compile(r"\[(\d+)\]")


@pytest.fixture(scope="module")
def script():
    """data/build_knowledge.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("build_knowledge", DATA / "build_knowledge.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rows() -> list[data.Conversation]:
    return data.load_conversations(ROWS)


def test_the_file_is_what_the_build_script_writes(script, smol_tokenizer):
    lines = [json.loads(line) for line in ROWS.read_text().splitlines()]
    assert lines == script.knowledge_rows(smol_tokenizer)


def test_600_questions_150_follow_ups_and_a_refusal_in_15_to_20_percent(rows):
    asked = [c for c in rows if len(c.messages) == 2]
    followed = [c for c in rows if len(c.messages) == 4]
    assert len(asked) >= 600 and len(followed) >= 150 and len(asked) + len(followed) == len(rows)
    assert all(c.messages[0].content.startswith(f"{KNOWLEDGE_COMMAND} ") for c in rows)
    refused = sum(c.reply == NO_DATA for c in rows)
    assert 0.15 <= refused / len(rows) <= 0.20, refused / len(rows)


def test_every_reply_is_one_radio_chunk_citing_one_excerpt_or_the_refusal(rows):
    for c in rows:
        for reply in c.replies:
            assert len(reply.encode()) <= 160, (c.line, reply)
            assert reply == NO_DATA or len(CITATION.findall(reply)) == 1, (c.line, reply)


def test_every_citation_is_an_excerpt_the_model_sees_that_holds_the_answer(
    script, rows, smol_tokenizer
):
    """Each exchange (a follow-up row's first one too) rendered and cut as training does
    (rendering.render, train.examples.encode_all): the cited [n] is still numbered in what the
    model sees and its excerpt holds the fact's key; a refused fact's key is nowhere in it."""
    exchanges = [
        replace(c, messages=c.messages[:n]) for c in rows for n in range(2, len(c.messages) + 1, 2)
    ]
    rendered = render(exchanges, MeshMasterRequests(share=1.0), 42)
    encoded = encode_all(smol_tokenizer, rendered, Recipe(sequence_len=2048), str(ROWS))
    keys = {a: f.keys for f in script.FACTS.values() for a in f.answers}
    kb, cited, refused = own_knowledge(), 0, 0
    for plain, rendered_row, enc in zip(exchanges, rendered, encoded, strict=True):
        assert "num_ctx" in rendered_row.meta, plain.line  # sent as the bot's request
        prompt = [t for t, label in zip(enc.input_ids, enc.labels, strict=True) if label == IGNORE]
        seen = smol_tokenizer.decode(prompt)
        seen = seen[: seen.rfind("Question: ")].lower()  # the question's words are no evidence
        if plain.reply == NO_DATA:
            fact = _fact_asked(script, plain)
            assert fact is None or all(k.lower() not in seen for k in fact.keys), plain.line
            refused += 1
            continue
        query = plain.messages[0].content.removeprefix(KNOWLEDGE_COMMAND).strip()
        n = int(CITATION.search(plain.reply).group(1))
        chunk = kb.search(query, 3200)[n - 1]
        fact_keys = keys[max((a for a in keys if a in plain.reply), key=len)]
        assert f"[{n}] {chunk.title}\n".lower() in seen, (plain.line, n)
        assert any(k.lower() in chunk.text.lower() for k in fact_keys), (plain.line, n)
        cited += 1
    assert cited >= 500 and refused >= 100


def _fact_asked(script, conv: data.Conversation):
    """The fact the exchange's last question asks for, from the script's table (None: a
    question the knowledge file does not answer)."""
    question = conv.messages[-2].content.removeprefix(KNOWLEDGE_COMMAND).strip()
    if len(conv.messages) == 2:
        return dict(script.questions())[question]
    first = conv.messages[0].content.removeprefix(KNOWLEDGE_COMMAND).strip()
    (then,) = {t for h, fs, t in script.FOLLOW_UPS
               if first in script.FACTS[h].asked and question in fs.split("|")}  # fmt: skip
    return script.FACTS[then] if then else None


def test_no_row_paraphrases_a_suite_item(rows):
    trained = [m.content for c in rows for m in c.messages if m.role == "user"]
    words = [data.content_words(t) for t in trained]
    normalized = {data.normalize(t) for t in trained}
    for suite in SUITES:
        for item in load_suite(str(suite)).items:
            for turn in (t.content for t in item.turns if t.role == "user"):
                assert data.normalize(turn) not in normalized, item.id
                closest = max(data.overlap(data.content_words(turn), w) for w in words)
                assert closest < data.MAX_OVERLAP, (item.id, closest)


def test_the_rows_check_clean_but_for_the_refusal_sentence_the_bot_demands(rows):
    _, issues = data.check(ROWS)
    by_line = {c.line: c for c in rows}
    assert sorted(i.code for i in issues) == ["W206", "W207"]  # one reply, one opening
    assert all(NO_DATA in by_line[i.line].replies for i in issues)
