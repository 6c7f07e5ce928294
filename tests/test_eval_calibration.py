"""The `mesh` suite checks the answer, not its vocabulary, and agrees with a careful judge.

The judged replies (../shared/judged) are the tuned 135M model's first samples, each read by
an expert blind to the checks. The suite's pass must agree with the judge's `correct` on at
least 90% of them, pass at most 4 replies the judge found wrong (2%), and pass at least 6 of
the 7 the judge found correct. reports/calibration.json, which the README quotes, must be what
benchmarks/calibration.py writes from the current checks.
"""

import json

import pytest
from tests.conftest import REPO

from meshtune.evaluate.calibration import calibrate
from meshtune.suites import Item, load_suite, matches

JUDGED = REPO.parent / "shared" / "judged" / "mesh-suite-tuned-135m-sample0.jsonl"
REPORT = REPO / "reports" / "calibration.json"
MESH = load_suite("mesh").items


def echoes(item: Item) -> list[str]:
    """Expect checks a reply can meet by repeating the question's own words."""
    return [c for c in (*item.expect_any, *item.expect_all) if matches(c, item.question)]


def test_an_expect_check_that_the_question_itself_meets_is_an_echo():
    item = Item(id="r", prompt="how do i get a note to VK3Z?", expect_any=["vk3z", "/optout"])
    assert echoes(item) == ["vk3z"]


@pytest.mark.parametrize("item", MESH, ids=lambda i: i.id)
def test_no_expect_check_is_met_by_repeating_the_question(item):
    assert echoes(item) == []


@pytest.mark.parametrize("item", MESH, ids=lambda i: i.id)
def test_every_item_says_which_commands_a_right_answer_may_name(item):
    assert item.allow_commands is not None


def test_relay_items_ask_for_the_shortname_first_dm_form_and_no_slash_command():
    relays = [i for i in MESH if i.need and i.need.startswith("the DM form")]
    assert len(relays) >= 12
    for item in relays:
        assert item.allow_commands == (), item.id


@pytest.fixture(scope="module")
def calibration():
    assert JUDGED.is_file(), f"{JUDGED} is missing: the calibration reads the judged replies"
    return calibrate(JUDGED, "mesh")


def test_the_suite_agrees_with_the_judge_on_nine_replies_in_ten(calibration):
    assert calibration.replies == 201
    assert calibration.agreement >= 0.9, calibration.disagreements


def test_the_suite_passes_at_most_four_replies_the_judge_found_wrong(calibration):
    wrong = [d for d in calibration.disagreements if d["passed"] and d["verdict"] == "wrong"]
    assert calibration.false_passes == len(wrong) <= 4, wrong


def test_the_suite_passes_at_least_six_of_the_seven_judged_correct(calibration):
    assert calibration.verdicts["correct"] == 7
    assert calibration.correct_passed >= 6, calibration.disagreements


def test_the_reported_calibration_is_the_current_one(calibration):
    report = json.loads(REPORT.read_text())
    assert report == {**calibration.to_dict(), "judged": report["judged"]}
    assert report["judged"].endswith(JUDGED.name)
