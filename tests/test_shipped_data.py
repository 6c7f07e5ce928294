"""The curated dataset meshtune ships: clean, covering, the right shape, disjoint from eval."""

import json
import statistics
from collections import Counter
from pathlib import Path

import pytest

from meshtune import data
from meshtune.commands import load_registry
from meshtune.meshmaster import question_of

DATA = Path(__file__).resolve().parents[1] / "data"
TRAIN = DATA / "mesh_conversations.jsonl"
SAMPLE = DATA / "mesh_conversations_sample.jsonl"
EVAL = DATA / "eval" / "mesh_eval.jsonl"

MIN_PER_CATEGORY = {
    "relay": 100,
    "commands": 250,
    "radio": 150,
    "roles": 80,
    "channels": 80,
    "troubleshooting": 120,
    "hardware": 60,
    "greetings": 80,
    "offtopic": 80,
    "about_bot": 40,
    "non_english": 40,
    "multi_turn": 100,
}


@pytest.fixture(scope="module")
def train() -> list[data.Conversation]:
    return data.load_conversations(TRAIN)


def test_the_training_file_checks_clean_with_no_warnings():
    ds, issues = data.check(TRAIN)
    assert ds.rows >= 1200
    assert [str(i) for i in issues] == []


def test_the_sample_file_has_only_the_size_warning():
    _, issues = data.check(SAMPLE)
    assert [i.code for i in issues] == ["W210"]


def test_every_category_has_its_minimum_count(train):
    counts = Counter(c.category for c in train)
    assert set(counts) == set(MIN_PER_CATEGORY)
    short = {k: (counts[k], n) for k, n in MIN_PER_CATEGORY.items() if counts[k] < n}
    assert not short


def test_replies_fit_a_lora_link(train):
    replies = [r for c in train for r in c.replies]
    chars = [len(r) for r in replies]
    assert 80 <= statistics.median(chars) <= 150
    assert max(chars) <= 200
    one_chunk = sum(len(r.encode()) <= 160 for r in replies) / len(replies)
    assert one_chunk >= 0.95


def test_commands_span_at_least_40_real_commands_and_relay_is_never_a_slash_command(train):
    registry = load_registry()
    used = {
        m.canonical
        for c in train
        if c.category == "commands"
        for r in c.replies
        for m in registry.mentions(r)
        if m.canonical
    }
    assert len(used) >= 40
    assert not any("/relay" in r.lower() for c in train for r in c.replies)


def test_multi_turn_rows_have_two_or_three_exchanges(train):
    for c in train:
        if c.category == "multi_turn":
            assert len(c.replies) in (2, 3), c.line


def test_at_least_200_prompts_have_mesh_masters_exact_shape(train):
    shaped = [c for c in train if question_of(c.messages[0].content) != c.messages[0].content]
    assert len(shaped) >= 200
    assert len({c.category for c in shaped}) == len(MIN_PER_CATEGORY)
    for c in shaped:
        assert c.messages[0].content.endswith("\nAnswer:") and c.messages[0].content.isascii()


def eval_items() -> list[dict]:
    return [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]


def test_the_eval_suite_has_150_items_with_the_suite_keys():
    items = eval_items()
    assert len(items) >= 150
    keys = {"id", "category", "expect_any", "expect_all", "forbid", "max_chars"}
    for item in items:
        assert keys <= item.keys() and ("prompt" in item) != ("messages" in item), item["id"]
        assert set(item) - keys <= {"prompt", "messages"}
    assert len({i["id"] for i in items}) == len(items)


def test_no_eval_prompt_appears_in_the_training_data(train):
    trained = {
        data.normalize(question_of(m.content))
        for c in train
        for m in c.messages
        if m.role == "user"
    }
    for item in eval_items():
        turns = (
            [item["prompt"]]
            if "prompt" in item
            else [m["content"] for m in item["messages"] if m["role"] == "user"]
        )
        for turn in turns:
            assert data.normalize(turn) not in trained, item["id"]
