"""The curated dataset meshtune ships: clean, covering, the right shape, disjoint from eval."""

import importlib.util
import json
import re
import statistics
from collections import Counter
from pathlib import Path

import pytest

from meshtune import data
from meshtune.commands import load_registry
from meshtune.evaluate.metrics import measure
from meshtune.meshmaster import question_of
from meshtune.suites import load_suite

DATA = Path(__file__).resolve().parents[1] / "data"
TRAIN = DATA / "mesh_conversations.jsonl"
SAMPLE = DATA / "mesh_conversations_sample.jsonl"
EVAL = DATA / "eval" / "mesh_eval.jsonl"

MIN_PER_CATEGORY = {
    "counter": 250,  # asks for a command or ability the bot lacks (issue 11)
    "follow_up": 30,  # follow-ups whose earlier words the model cannot see
    "relay": 100,
    "commands": 150,
    "radio": 150,
    "roles": 80,
    "channels": 80,
    "troubleshooting": 120,
    "hardware": 60,
    "greetings": 80,
    "offtopic": 80,
    "about_bot": 40,
    "non_english": 40,
    "multi_turn": 90,
}


def train_rows() -> list[data.Conversation]:
    return data.load_conversations(TRAIN)


@pytest.fixture(scope="module")
def train() -> list[data.Conversation]:
    return train_rows()


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


def test_every_command_is_taught_by_15_replies_or_none_and_relay_is_never_a_slash_command(
    train,
):
    counts, _ = data.command_counts(train, load_registry())
    assert len(counts) >= 25
    assert min(counts.values()) >= 15
    assert not any("/relay" in r.lower() for c in train for r in c.replies)


def test_no_single_frame_teaches_the_commands():
    replies = [r for c in train_rows() for r in c.replies]
    assert sum(r.startswith("Send /") for r in replies) / len(replies) <= 0.05


def test_counter_examples_cover_invented_names_and_commands_that_are_not_words_of_the_question(
    train,
):
    registry = load_registry()
    counter = [c for c in train if c.category == "counter"]
    invented = [c for c in counter if registry.unknown(c.messages[0].content)]
    assert len(invented) >= 100
    for name in ["/send", "/mute", "/local", "/pass", "/network", "/relay", "/sms"]:
        assert any(name in c.messages[0].content.lower().split() for c in invented), name
    assert any(c.messages[0].content.startswith("/message bob1") for c in counter)
    assert any(c.messages[0].content == "/weather denver" for c in counter)
    # the taught command is not a word the user typed ("mute yourself" -> /stop)
    not_a_word = [
        c
        for c in counter
        if (named := {m.written.lstrip("/") for m in registry.mentions(c.reply) if m.canonical})
        and not named & set(data.normalize(c.messages[0].content).split())
    ]
    assert len(not_a_word) >= 150


def test_follow_ups_without_visible_history_get_a_short_question_back(train):
    follow = [c for c in train if c.category == "follow_up"]
    assert len(follow) >= 30
    for c in follow:
        assert len(c.messages) == 2 and not c.channel, c.line
        assert "?" in c.reply and len(c.reply.encode()) <= 160, c.line


def test_multi_turn_rows_have_two_or_three_exchanges(train):
    for c in train:
        if c.category == "multi_turn":
            assert len(c.replies) in (2, 3), c.line


def test_rows_are_plain_conversations_and_channel_rows_are_flagged(train):
    # the Mesh Master request is rendered at load time by one builder, never stored
    for c in train:
        assert c.messages[0].role == "user", c.line
        for m in c.messages:
            assert question_of(m.content) == m.content and "Context:" not in m.content, c.line
        assert c.meta.get("channel", True) is True, c.line  # the key is true or absent
    channel = [c for c in train if c.channel]
    assert 200 <= len(channel) <= len(train) // 2
    assert len({c.category for c in channel}) >= 10


def eval_items() -> list[dict]:
    return [json.loads(line) for line in EVAL.read_text().splitlines() if line.strip()]


def test_the_eval_suite_has_150_items_with_the_suite_keys_and_a_good_and_bad_reply():
    items = eval_items()
    assert len(items) >= 150
    keys = {"id", "category", "expect_any", "expect_all", "forbid", "max_chars", "good", "bad"}
    for item in items:
        assert keys <= item.keys() and ("prompt" in item) != ("messages" in item), item["id"]
        assert set(item) - keys <= {
            "prompt",
            "messages",
            "channel",
            "allow_commands",
            "stance",
            "need",
        }
        assert item.get("channel", True) is True, item["id"]
    assert len({i["id"] for i in items}) == len(items)


ITEM_CHECKS = {
    "missing-expected",
    "missing-required",
    "wrong-command",
    "wrong-stance",
    "forbidden",
    "too-long",
    "not-refused",  # a knowledge item whose answer is not in the knowledge file
    "refused",
}


@pytest.mark.parametrize("item", load_suite(str(EVAL)).items, ids=lambda i: i.id)
def test_every_eval_items_checks_accept_its_good_reply_and_reject_its_bad_one(item):
    registry = load_registry()
    good = measure(item.good, "stop", item, registry)
    assert good["passed"], good["failures"]
    assert registry.misuses(item.good, item.channel) == []  # canonical names, right usage
    bad = measure(item.bad, "stop", item, registry)
    # the item's own checks catch it, not only the registry's invented-command detector
    assert set(bad["failures"]) & ITEM_CHECKS, bad["failures"]


# The bound between an eval prompt and the training prompts (see data.content_words).
MAX_OVERLAP = data.MAX_OVERLAP
content_words, overlap = data.content_words, data.overlap


def test_content_word_overlap_is_the_jaccard_index_of_words_outside_the_stopwords():
    a = content_words("What's the SNR floor on LongFast?")
    assert a == {"snr", "floor", "longfast"}
    assert overlap(a, content_words("longfast snr limit")) == 0.5


def test_no_eval_prompt_shares_half_its_content_words_with_a_training_prompt(train):
    trained = {content_words(m.content) for c in train for m in c.messages if m.role == "user"}
    close = {}
    for item in load_suite(str(EVAL)).items:
        for turn in item.turns:
            if turn.role == "user":
                words = content_words(turn.content)
                worst = max(overlap(words, t) for t in trained)
                if worst >= MAX_OVERLAP:
                    close[item.id] = round(worst, 2)
    assert close == {}


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


# ---------------------------------------------------------------- generated rows (issue 21)

REFERENCE = DATA.parents[1] / "shared" / "reference" / "meshtastic.md"


def build_core():
    """data/build_core.py as a module (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("build_core", DATA / "build_core.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_rows_are_what_the_build_script_writes():
    lines, _ = build_core().build(TRAIN, EVAL)
    assert lines == [line for line in TRAIN.read_text().splitlines() if line.strip()]


def generated(train) -> list[data.Conversation]:
    return [c for c in train if c.meta.get("source") == "build_core"]


def test_generated_replies_state_no_number_the_references_do_not_hold(train):
    registry = DATA.parent / "src" / "meshtune" / "assets" / "mesh_master_commands.yaml"
    reference = REFERENCE.read_text() + registry.read_text()
    numbers = {n for c in generated(train) for n in re.findall(r"\d+(?:\.\d+)?", c.reply)}
    numbers -= {n for c in generated(train) for n in re.findall(r"\d+", c.messages[0].content)}
    assert numbers and {n for n in numbers if n not in reference} == set()


def test_technical_questions_outside_the_core_facts_get_the_pointer_to_meshtastic(train):
    rows = generated(train)
    pointers = [c for c in rows if "/meshtastic" in c.reply]
    assert len(pointers) >= 25
    for c in pointers:
        assert "reference" in c.reply and not re.search(r"\d", c.reply), c.line
        assert len(c.reply.encode()) <= 160, c.line
    # the core facts each taught by several phrasings, in DMs and on channels
    for fact in ("LongFast", "AQ==", "hop limit", "8 channels", "-17.5 dB"):
        assert sum(fact in c.reply for c in rows) >= 3, fact
    assert any(c.channel for c in rows) and any(not c.channel for c in rows)


def test_the_relay_form_is_taught_shortname_first_without_a_slash(train):
    relays = [c for c in generated(train) if c.category == "relay"]
    assert len(relays) >= 8
    for c in relays:
        assert re.search(r"DM me: [A-Za-z0-9]+ \w", c.reply) and "/" not in c.reply, c.line
