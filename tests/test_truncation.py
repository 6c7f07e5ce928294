"""What Ollama lets the model see: a prompt over num_ctx is cut to its first num_keep tokens and
its tail (about half the context), and meshtune shows, evaluates and trains on that cut."""

import json

import pytest

from meshtune import chat, meshmaster
from meshtune.data import Conversation, Message
from meshtune.meshmaster.truncation import cut_trained_row, model_view, ollama_cut, shift_discard
from meshtune.recipe import Recipe
from meshtune.rendering import NUM_CTX_KEY
from meshtune.train.examples import encode_all


def golden_request(real, case_id: str = "kb-preset:meshtastic") -> str:
    path = real / "mesh-master-golden-knowledge.jsonl"
    cases = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return next(c for c in cases if c["id"] == case_id)["prompt"]


def test_a_prompt_within_num_ctx_minus_one_is_sent_whole():
    tokens = list(range(1023))
    cut = ollama_cut(tokens, 1024, adds_bos=False)
    assert cut.tokens == tokens and not cut.truncated


def test_a_longer_prompt_keeps_num_keep_tokens_and_the_tail_half_the_context():
    tokens = list(range(1900))
    cut = ollama_cut(tokens, 1024, adds_bos=False)
    # limit = num_ctx - (num_ctx - keep) // 2 = 1024 - 510 = 514: 4 kept, the last 510
    assert cut.tokens == [0, 1, 2, 3, *range(1390, 1900)]
    assert cut.dropped == 1386
    with_bos = ollama_cut(tokens, 1024, adds_bos=True)  # BOS is kept beside num_keep's 4
    assert with_bos.keep == 5 and with_bos.tokens == [*range(5), *range(1390, 1900)]


def test_the_context_shifts_by_half_of_what_follows_the_kept_tokens_when_full():
    assert shift_discard(held=1022, num_ctx=1024, keep=4) == 0
    assert shift_discard(held=1023, num_ctx=1024, keep=4) == (1023 - 4) // 2


def test_a_golden_meshtastic_request_at_num_ctx_1024_loses_the_system_text_and_first_excerpt(
    real, smol_tokenizer
):
    prompt = golden_request(real)
    system = meshmaster.DEFAULT_SYSTEM_PROMPT
    cut = model_view(smol_tokenizer, system, prompt, num_ctx=1024)
    whole = smol_tokenizer.decode(model_view(smol_tokenizer, system, prompt, 100_000).tokens)
    seen = smol_tokenizer.decode(cut.tokens)
    assert cut.total > 1500 and len(cut.tokens) == 1024 - (1024 - 4) // 2
    assert seen.startswith(smol_tokenizer.decode(cut.tokens[:4]))
    assert whole.endswith(seen[len(smol_tokenizer.decode(cut.tokens[:4])) :])
    end = "square brackets.\nAnswer:<|im_end|>\n<|im_start|>assistant\n"
    assert seen.endswith(end)
    assert "Question: what spreading factor does longfast use" in seen
    assert meshmaster.KNOWLEDGE_SYSTEM_PROMPT not in seen
    assert system not in seen
    assert "[1] Data Rates" not in seen  # in both copies


def test_meshtune_prompt_with_a_local_model_shows_what_survives(cli, real):
    result = cli(
        "prompt",
        "/meshtastic what spreading factor does longfast use",
        "--knowledge",
        real / "mesh-master-meshtastic-knowledge.txt",
        "--model",
        "smollm2-135m",
    )
    assert result.code == 0, result.err
    assert result.out.strip() == golden_request(real).strip()
    first = result.err.splitlines()[0]
    assert "over num_ctx 1024" in first and "cuts them to 514" in first
    assert "Question: what spreading factor does longfast use" in result.err
    short = cli("prompt", "how far does longfast reach?", "--model", "smollm2-135m")
    assert short.code == 0 and "the model sees it all" in short.err


def test_a_training_row_rendered_as_the_bots_request_trains_on_what_ollama_leaves(
    real, smol_tokenizer
):
    prompt, reply = golden_request(real), "LongFast uses SF11 [1]."
    row = Conversation((Message("user", prompt), Message("assistant", reply)))
    bot_row = Conversation(row.messages, meta={NUM_CTX_KEY: 1024})
    plain, cut = encode_all(smol_tokenizer, [row, bot_row], Recipe(), "data")
    system = Recipe().system_prompt
    seen = model_view(smol_tokenizer, system, prompt, 1024).tokens
    assert cut.input_ids[: len(seen)] == seen
    assert cut.input_ids[len(seen) :] == plain.input_ids[-(len(cut.input_ids) - len(seen)) :]
    assert smol_tokenizer.decode([t for t in cut.labels if t != chat.IGNORE]).startswith(reply)
    assert cut.trained == plain.trained
    assert len(plain.input_ids) > 1500


def test_a_bot_request_longer_than_sequence_len_trains_whole_as_a_row_of_its_own(
    real, smol_tokenizer
):
    from meshtune.train.packing import pack, shared_len

    prompt = golden_request(real)
    bot_row = Conversation(
        (Message("user", prompt), Message("assistant", "LongFast uses SF11 [1].")),
        meta={NUM_CTX_KEY: 1024},
    )
    chats = [
        Conversation((Message("user", f"hi {i}"), Message("assistant", "hello"))) for i in range(8)
    ]
    recipe = Recipe(sequence_len=256)
    encoded = encode_all(smol_tokenizer, [bot_row, *chats], recipe, "data")
    assert len(encoded[0].input_ids) > 256  # what the bot sends, not cut to sequence_len
    rows = pack(encoded, recipe.sequence_len, True, seed=0)
    assert [encoded[0]] in rows  # alone in its row
    computed = [  # a row's tokens, each shared prefix counted once
        sum(len(e.input_ids) - (shared_len(r[0], e) if k else 0) for k, e in enumerate(r))
        for r in rows
        if encoded[0] not in r
    ]
    assert len(computed) >= 1 and max(computed) <= 256  # short chats keep their short rows


def test_cutting_a_row_never_touches_its_trained_tokens():
    ids, labels = list(range(2000)), [chat.IGNORE] * 1990 + list(range(1990, 2000))
    new_ids, new_labels = cut_trained_row(ids, labels, 1024, False, chat.IGNORE)
    assert new_ids[-10:] == new_labels[-10:] == list(range(1990, 2000))
    assert len(new_ids) == 514 + 10
    assert cut_trained_row(ids[-100:], labels[-100:], 1024, False, chat.IGNORE) == (
        ids[-100:],
        labels[-100:],
    )


@pytest.mark.parametrize("num_ctx", [1024, 2048])
def test_the_cut_is_about_half_the_context_whatever_the_prompt(num_ctx):
    cut = ollama_cut(list(range(5000)), num_ctx, adds_bos=False)
    assert len(cut.tokens) == num_ctx - (num_ctx - 4) // 2


# ---------------------------------------------------------------- llama.cpp (eval and chat)


@pytest.fixture(scope="module")
def llama():
    from meshtune import models
    from meshtune.evaluate.backends import LlamaCppBackend

    backend = LlamaCppBackend(models.embedded_gguf(), threads=1)
    yield backend
    backend.close()


def long_request(num_ctx: int, num_predict: int, profile: str = "greedy"):
    from meshtune.evaluate.profiles import Profile, build_request, get_profile
    from meshtune.suites import Item

    words = " ".join(f"word{i}" for i in range(300))
    item = Item(id="long", prompt=f"{words} How do I relay to alice?")
    base = get_profile(profile)
    options = {**base.options, "num_ctx": num_ctx, "num_predict": num_predict}
    return build_request(item, Profile(base.name, options, True), meshmaster.DEFAULT_SYSTEM_PROMPT)


def test_llamacpp_evaluates_what_ollama_leaves_of_an_overlong_prompt(llama):
    req = long_request(num_ctx=256, num_predict=20)
    sent = llama.prompt_tokens(req.messages)
    gen = llama.generate(req, 0)
    assert gen.prompt_tokens == len(sent) > 256  # reported as sent
    cut = ollama_cut(sent, 256, adds_bos=False)
    assert llama.lanes[0].cached[: len(cut.tokens)] == cut.tokens  # what the cache holds


def test_llamacpp_shifts_the_context_when_the_reply_fills_it(llama):
    sent = llama.prompt_tokens(long_request(4096, 40).messages)
    req = long_request(num_ctx=len(sent) + 4, num_predict=40)  # full after 3 reply tokens
    gen = llama.generate(req, 0)
    assert gen.completion_tokens > 4  # the reply went on past a full context
    assert llama.lanes[0].cached == []  # the shift moved the cells: no prefix to reuse
    sampled = long_request(num_ctx=len(sent) + 4, num_predict=40, profile="meshmaster")
    together = [g.text for g in llama.generate_batch(sampled, [1, 2])]
    assert together == [llama.generate(sampled, 1).text, llama.generate(sampled, 2).text]


def test_hf_evaluates_what_ollama_leaves_of_an_overlong_prompt(tiny_llama):
    from meshtune import chat
    from meshtune.evaluate.backends import HFBackend

    hf = HFBackend(tiny_llama, threads=1)
    req = long_request(
        num_ctx=256, num_predict=8, profile="meshmaster"
    )  # sampled: prompt-sensitive
    whole = hf.prompt_ids(req)
    assert len(whole) > 256
    seen = hf.seen_ids(req, whole)
    assert seen == ollama_cut(whole, 256, adds_bos=chat.adds_bos(hf.tokenizer)).tokens
    assert len(seen) < 256
    gen = hf.generate(req, 0)
    assert gen.prompt_tokens == len(whole)  # reported as sent, as llama.cpp's
    assert gen.text == hf._generate([seen], [0], req.profile)[0].text  # decoded from the cut
    assert gen.text != hf._generate([whole], [0], req.profile)[0].text


def test_eval_warns_with_the_count_when_prompts_exceed_the_configs_num_ctx(
    cli, tiny_llama, tmp_path
):
    suite = tmp_path / "suite.jsonl"
    rows = [
        {"id": "short", "prompt": "hi"},
        {"id": "long", "prompt": " ".join(f"word{i}" for i in range(400))},
    ]
    suite.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"ollama_num_ctx": 512}), encoding="utf-8")
    result = cli(
        "eval", tiny_llama, "--backend", "hf", "--suite", suite, "--profile", "greedy",
        "--mesh-master-config", config, "--out", tmp_path / "report",
    )  # fmt: skip
    assert result.code in (0, 1), result.err
    assert "warning: 1 of 2 prompts exceed num_ctx 512" in result.err
    assert "the replies answer what it leaves" in result.err
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert list(summary["over_num_ctx"]["items"]) == ["long"]
