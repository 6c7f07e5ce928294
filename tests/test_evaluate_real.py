"""The embedded SmolLM2-135M model end to end through transformers (slow: the float32 model
takes a while to load and decode on CPU)."""

import pytest

from meshtune import meshmaster, models
from meshtune.evaluate import evaluate
from meshtune.evaluate.backends import HFBackend, LlamaCppBackend
from meshtune.evaluate.profiles import build_request, get_profile
from meshtune.suites import load_suite

pytestmark = [pytest.mark.slow, pytest.mark.real]


def test_hf_and_llamacpp_feed_the_embedded_model_the_same_prompt_tokens():
    hf = HFBackend(models.resolve("smollm2-135m").folder, threads=2)
    llama = LlamaCppBackend(models.embedded_gguf(), threads=2)
    for item in load_suite("quick").items:
        req = build_request(item, get_profile("greedy"), meshmaster.DEFAULT_SYSTEM_PROMPT)
        assert hf.generate(req, 0).prompt_tokens == len(llama.prompt_tokens(req.messages))
        text = hf.tokenizer.apply_chat_template(
            req.messages, tokenize=False, add_generation_prompt=True
        )
        ids = hf.tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == llama.prompt_tokens(req.messages)
    llama.close()


def test_untuned_embedded_model_through_hf_is_not_ready_on_the_quick_suite(tmp_path):
    result = evaluate(
        "smollm2-135m",
        "quick",
        backend="hf",
        profile="meshmaster",
        samples=2,
        out=tmp_path,
        threads=2,
    )
    assert result.summary["backend"] == "hf" and result.summary["replies"] == 8
    assert all(r["tokens"] for r in result.rows)
    assert not result.ready
    assert (tmp_path / "report.html").is_file()
