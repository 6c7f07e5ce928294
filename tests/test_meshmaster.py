"""Mesh Master's prompt shape and radio chunking, as the bot does them."""

from meshtune.meshmaster import SYSTEM_PROMPT, build_prompt, question_of, split_chunks


def test_prompt_joins_sections_with_blank_lines_and_ends_with_answer():
    prompt = build_prompt("how do i relay to bob", ["K7Q: anyone up?", "BOB: here"], "Be brief.")
    assert prompt == (
        "Be brief.\n\nContext:\nK7Q: anyone up?\nBOB: here\n\n"
        "Question: how do i relay to bob\nAnswer:"
    )


def test_prompt_without_context_or_system_omits_those_sections():
    assert build_prompt("hi", (), "") == "Question: hi\nAnswer:"


def test_prompt_is_transliterated_to_ascii_like_the_bot():
    prompt = build_prompt("¿Cómo envío un mensaje?")
    assert prompt.isascii()
    assert "Como envio un mensaje?" in prompt
    assert prompt.startswith("Mesh assistant: concise, calm, accurate.")
    assert "follow-up" in prompt and "don't" in prompt  # the config's typographic marks
    assert SYSTEM_PROMPT.split(":")[0] in prompt


def test_question_of_recovers_the_users_message():
    assert question_of(build_prompt("whats snr", ["A: x"])) == "whats snr"
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
