"""The guide's 1B path with a stand-in for meta-llama/Llama-3.2-1B-Instruct (benchmarks/
standin.py: a tiny random llama3 model with Meta's Llama-3.2 chat template) in a Hugging Face
cache: evaluation finds the id where training does, and every Llama-3 prompt carries the date
training rendered, whatever day it is."""

from pathlib import Path

import pytest
from benchmarks import standin
from tests.tiny import llama32_tokenizer_from, lora_run

from meshtune import chat, export, meshmaster
from meshtune.errors import MeshtuneError
from meshtune.evaluate.backends import LlamaCppBackend, open_backend, resolve_model
from meshtune.evaluate.profiles import build_request, get_profile
from meshtune.suites import Item

ANOTHER_DAY = "01 Jan 2031"


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory, smol_folder):
    """The tiny stand-in under REPO_ID in a Hugging Face cache, the cache made the default."""
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("standin")
    llama32_tokenizer_from(smol_folder).save_pretrained(root / "tokenizer")
    snapshot = standin.build(root / "tokenizer", root / "hub", shape="tiny")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(constants, "HF_HUB_CACHE", str(root / "hub"))
        yield snapshot


@pytest.fixture
def another_day(monkeypatch):
    """Today is ANOTHER_DAY for every chat template that asks (llama-cpp-python's and
    transformers' strftime_now)."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter
    from transformers.utils import chat_template_utils

    monkeypatch.setattr(Jinja2ChatFormatter, "strftime_now", staticmethod(lambda f: ANOTHER_DAY))
    monkeypatch.setattr(chat_template_utils, "strftime_now", lambda f: ANOTHER_DAY, raising=False)


def test_eval_finds_a_hugging_face_id_in_the_cache_and_labels_it_by_the_id(hf_cache):
    spec = resolve_model(standin.REPO_ID)
    assert (spec.backend, spec.label, spec.hf_name) == ("hf", standin.REPO_ID, str(hf_cache))
    with pytest.raises(MeshtuneError, match="not a GGUF"):
        resolve_model(standin.REPO_ID, "llamacpp")
    with pytest.raises(MeshtuneError, match="Hugging Face id in the local cache"):
        resolve_model("meta-llama/Llama-3.2-3B-Instruct")  # not in the cache


def test_every_llama3_prompt_carries_the_training_date_on_any_day(hf_cache, another_day):
    """llama.cpp (eval, chat) and transformers render the same tokens as training, with
    chat.TEMPLATE_DATE, while the calendar says another day."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = lora_run(
        hf_cache.parents[3] / "run",
        AutoModelForCausalLM.from_pretrained(hf_cache),
        standin.REPO_ID,
        "llama3",
    )
    info, _ = export.export(run, quant="F32", name="standin")
    request = build_request(
        Item(id="relay", prompt="How do I relay to alice?"),
        get_profile("meshmaster"),
        meshmaster.DEFAULT_SYSTEM_PROMPT,
    )
    tokenizer = AutoTokenizer.from_pretrained(hf_cache)
    exchange = [*request.messages, {"role": "assistant", "content": "Use /relay alice."}]
    trained = chat.render(tokenizer, [chat.Message(**m) for m in exchange])
    hf = open_backend(resolve_model(standin.REPO_ID), threads=1)
    llama = LlamaCppBackend(run / info.gguf, threads=1)
    try:
        in_llama = llama.prompt_tokens(request.messages)
        in_hf = hf.prompt_ids(request)
    finally:
        llama.close()
    assert in_llama == in_hf
    text = tokenizer.decode(in_llama)
    assert trained.startswith(text)  # the prompt as training rendered it
    assert f"Today Date: {chat.TEMPLATE_DATE}\n" in text and ANOTHER_DAY not in text


def test_the_models_own_sampling_defaults_never_reach_the_evaluation(hf_cache):
    """The stand-in ships Meta's generation_config.json (do_sample, temperature 0.6): under
    the greedy profile every seed still gets the one greedy reply."""
    import json

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_cache)
    assert chat.family_of(tokenizer).name == "llama3"
    assert json.loads(Path(hf_cache, "generation_config.json").read_text())["do_sample"] is True
    hf = open_backend(resolve_model(standin.REPO_ID), threads=1)
    greedy = build_request(Item(id="q", prompt="What is SNR?"), get_profile("greedy"), "Be brief.")
    replies = hf.generate_many([(greedy, seed) for seed in range(4)])
    assert len({r.text for r in replies}) == 1
    sampled = build_request(Item(id="q", prompt="What is SNR?"), get_profile("meshmaster"), "")
    assert len({r.text for r in hf.generate_many([(sampled, s) for s in range(4)])}) > 1
