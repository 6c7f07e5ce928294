"""Mesh Master's request, reproduced byte for byte from the bot's own recorded prompts, and its
radio chunking."""

import json

import pytest

from meshtune import meshmaster
from meshtune.errors import MeshtuneError
from meshtune.meshmaster import SHIPPED, Line, build_prompt, question_of, split_chunks


def golden(real) -> list[dict]:
    path = real / "mesh-master-golden-prompts.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prompt_args(case: dict, tmp_path) -> list[str]:
    """The `meshtune prompt` command line an operator would type for a golden case."""
    config = tmp_path / f"{case['id']}-config.json"
    config.write_text(json.dumps(case["config"], ensure_ascii=False), encoding="utf-8")
    args = ["prompt", case["message"], "--mesh-master-config", config, "--json"]
    args += ["--persona", case["persona_id"], "--sender", case["sender_shortname"]]
    if case["history"]:
        history = tmp_path / f"{case['id']}-history.jsonl"
        history.write_text(
            "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in case["history"]),
            encoding="utf-8",
        )
        args += ["--history", history]
    if case["bot_shortname"]:
        args += ["--bot", case["bot_shortname"]]
    if not case["is_direct"]:
        args.append("--channel")
    return args


def test_meshtune_prompt_json_reproduces_every_golden_prompt_and_options(cli, real, tmp_path):
    cases = golden(real)
    assert len(cases) == 10
    for case in cases:
        args = [*prompt_args(case, tmp_path), "--personas", real / "mesh-master-personas.json"]
        result = cli(*args)
        assert result.code == 0, (case["id"], result.err)
        body = json.loads(result.out)
        assert body["prompt"] == case["prompt"], case["id"]
        assert body["options"] == case["options"], case["id"]
        assert body["stream"] is True


def test_default_persona_needs_no_personas_file(cli, real, tmp_path):
    """meshtune carries the bot's default persona (trail) itself; the rest come from the
    operator's files."""
    for case in golden(real):
        if case["persona_id"] != "trail":
            continue
        result = cli(*prompt_args(case, tmp_path))
        assert result.code == 0, result.err
        assert json.loads(result.out)["prompt"] == case["prompt"]


def test_unknown_persona_is_one_line_error_listing_the_available_ones(cli, real, tmp_path):
    case = next(c for c in golden(real) if c["id"] == "dm-medic")
    result = cli(*prompt_args(case, tmp_path))
    assert result.code == 2
    assert "unknown persona 'medic'" in result.err and "available: trail" in result.err
    assert "--personas" in result.err and len(result.err.strip().splitlines()) == 1


def test_malformed_config_and_history_name_the_file_and_line(cli, tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{\n  "system_prompt": "x",\n  "ollama_num_ctx": \n}\n')
    result = cli("prompt", "hi", "--mesh-master-config", config)
    assert result.code == 2 and f"{config}:4: invalid JSON" in result.err

    config.write_text('{"ollama_max_messages": "eight"}')
    result = cli("prompt", "hi", "--mesh-master-config", config)
    assert result.code == 2 and "`ollama_max_messages` 'eight' is not a whole number" in result.err

    history = tmp_path / "history.jsonl"
    history.write_text('{"from": "K7QX", "text": "hi", "ai": false}\n{"from": "K7QX"}\n')
    result = cli("prompt", "hi", "--history", history)
    assert result.code == 2 and f"{history}:2: `text` must be a string" in result.err


def test_a_dm_context_holds_placeholders_never_words():
    history = [Line("K7QX", "my secret is 1234"), Line("bot", "got it, 1234", ai=True)]
    prompt = build_prompt("and now?", history=history)
    assert "1234" not in prompt
    assert prompt.endswith(
        "Context:\nK7QX: 📨 dm received\nNode_Mesh Master: 📨 dm received\n"
        "K7QX: 📨 dm received\n\nQuestion: and now?\nAnswer:"
    )


def test_mail_and_log_commands_are_logged_as_markers_on_channels():
    history = [Line("K7QX", "/m bob meet at noon"), Line("K7QX", "solar keeps failing")]
    prompt = build_prompt("/ai why?", history=history, channel=True)
    assert "meet at noon" not in prompt
    assert "Context:\nK7QX: solar keeps failing\n\nQuestion: why?" in prompt


def test_a_channel_thread_is_the_root_and_the_bots_replies_to_it_only():
    history = [
        Line("K7QX", "old topic"),
        Line("K7QX", "/ai about old topic"),
        Line("bot", "old answer", ai=True),
        Line("ZED", "unrelated chatter"),
        Line("K7QX", "new topic: battery drain"),
        Line("K7QX", "/ai what drains it?"),
        Line("bot", "GPS and screen.", ai=True),
    ]
    prompt = build_prompt("/ai and at night?", history=history, channel=True)
    assert "Context:\nK7QX: new topic: battery drain\nNode_Mesh Master: GPS and screen.\n\n" in (
        prompt
    )
    assert "old" not in prompt and "ZED" not in prompt


def test_history_keeps_the_last_n_lines_then_the_last_m_characters_even_mid_line():
    history = [Line("K7QX", f"message {i}") for i in range(5)]
    three = "\n".join(["K7QX: 📨 dm received"] * 3)
    prompt = build_prompt("q", meshmaster.BotConfig(max_messages=3), history=history)
    assert f"Context:\n{three}\n\nQuestion: q" in prompt
    cut = build_prompt("q", meshmaster.BotConfig(max_messages=3, context_chars=25), history=history)
    assert three[-25:] == "eived\nK7QX: 📨 dm received"  # the cut falls mid-word
    assert f"Context:\n{three[-25:]}\n\nQuestion: q" in cut


def test_only_the_question_is_transliterated():
    prompt = build_prompt("¿Cómo envío un mensaje? 👋")
    assert "Question: ?Como envio un mensaje?\nAnswer:" in prompt
    assert "follow‑up" in prompt and "🧭 Current persona: Trail (trail)" in prompt


def test_messages_the_bot_never_sends_to_the_model_are_errors():
    with pytest.raises(MeshtuneError, match="only /ai, /bot or /data"):
        build_prompt("hello channel", channel=True)
    with pytest.raises(MeshtuneError, match="has no question"):
        build_prompt("/ai", channel=True)
    with pytest.raises(MeshtuneError, match="is a command"):
        build_prompt("/weather")
    assert question_of(build_prompt("/ai")) == "ai"  # a bare /ai in a DM is asked as "ai"


def test_shipped_defaults_are_the_bots_shipped_config(real):
    shipped = json.loads((real / "mesh-master-config.json").read_text(encoding="utf-8"))
    assert SHIPPED.system_prompt == shipped["system_prompt"]
    assert SHIPPED.default_persona == shipped["default_personality_id"]
    assert SHIPPED.max_messages == shipped["ollama_max_messages"]
    assert SHIPPED.context_chars == shipped["ollama_context_chars"]
    assert SHIPPED.options()["num_ctx"] == shipped["ollama_num_ctx"]
    assert SHIPPED.ai_node_name == "Mesh Master"  # the bot's shipped ai_node_name


def test_question_of_recovers_the_users_message():
    assert question_of(build_prompt("whats snr")) == "whats snr"
    assert question_of("plain question") == "plain question"


def test_chunks_are_at_most_160_bytes_and_break_at_words():
    text = "word " * 100
    chunks = split_chunks(text.strip())
    assert len(chunks) == 4
    assert all(len(c.encode()) <= 160 for c in chunks)
    assert all(not c.endswith("wor") for c in chunks)
    assert " ".join(chunks) == text.strip()


def test_chunks_count_utf8_bytes_not_characters():
    text = "é" * 100  # 100 characters, 200 bytes
    chunks = split_chunks(text)
    assert [len(c) for c in chunks] == [80, 20]
    assert split_chunks("short") == ["short"]
