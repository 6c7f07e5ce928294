"""Modelfiles: the TEMPLATE of each chat family, proven with Go's text/template (the engine
Ollama uses) against the model's own chat template; parsing as Ollama parses; the lint."""

import pytest
from tests.tiny import llama32_tokenizer_from

from meshtune import chat, ollama
from meshtune.errors import MeshtuneError
from meshtune.export import modelfile
from meshtune.meshmaster import DEFAULT_SYSTEM_PROMPT, build_prompt
from meshtune.models import embedded_gguf

# The three conversation shapes of the issue, as a client sends them to Ollama.
SHAPES = {
    "system+user": (
        chat.Message("system", "Answer in one short line."),
        chat.Message("user", "Hey are you there?"),
    ),
    "user-only (Ollama adds SYSTEM)": (chat.Message("user", build_prompt("What's a good SNR?")),),
    "multi-turn": (
        chat.Message("user", "How do I relay to alice?"),
        chat.Message("assistant", "DM me 'alice <message>' and I'll pass it on."),
        chat.Message("user", "And to bob?"),
    ),
}


@pytest.fixture(scope="module")
def llama32_tokenizer(smol_folder):
    return llama32_tokenizer_from(smol_folder)


def go_and_model_prompts(tokenizer) -> list[tuple[str, str, str]]:
    """(shape, what Go renders from the family's TEMPLATE, what the chat template renders)."""
    template = modelfile.template_for(tokenizer)
    shaped = [modelfile.ollama_messages(c, DEFAULT_SYSTEM_PROMPT) for c in SHAPES.values()]
    rendered = modelfile.render_go(template, shaped)
    out = []
    for name, conv, go_text in zip(SHAPES, shaped, rendered, strict=True):
        trained = chat.render(tokenizer, [chat.Message(**m) for m in conv], True)
        out.append((name, go_text, trained))
    return out


def test_go_renders_the_chatml_template_exactly_as_smollm2s_chat_template(smol_tokenizer):
    assert chat.family_of(smol_tokenizer).name == "chatml"
    for shape, go_text, trained in go_and_model_prompts(smol_tokenizer):
        assert go_text == trained, shape
    # SmolLM2's template injects its own default system prompt when a chat has none; Ollama
    # always puts SYSTEM first, so the deployed prompt never contains it.
    assert all("named SmolLM" not in go for _, go, _ in go_and_model_prompts(smol_tokenizer))


def test_go_renders_the_llama3_template_as_llama_3_2s_chat_template_with_bos_added_by_llama_cpp(
    llama32_tokenizer,
):
    tok = llama32_tokenizer
    assert chat.family_of(tok).name == "llama3"
    assert chat.adds_bos(tok)
    for shape, go_text, trained in go_and_model_prompts(tok):
        # The runtime adds BOS itself (add_bos_token), so the TEMPLATE must not print it...
        assert trained == tok.bos_token + go_text, shape
        # ...and the token ids the model sees are the trained ones, one BOS included.
        assert tok(go_text)["input_ids"] == tok(trained, add_special_tokens=False)["input_ids"]
        assert tok(go_text)["input_ids"].count(tok.bos_token_id) == 1


def test_the_llama_3_2_date_line_is_pinned_so_training_and_the_template_agree_every_day(
    llama32_tokenizer,
):
    rendered = chat.render(llama32_tokenizer, SHAPES["system+user"], True)
    assert f"Today Date: {chat.TEMPLATE_DATE}\n\n" in rendered
    assert f"Today Date: {chat.TEMPLATE_DATE}" in modelfile.template_for(llama32_tokenizer)


def test_go_follows_ollamas_legacy_system_prompt_templates_turn_by_turn(real):
    """The v2 Modelfile's TEMPLATE uses only .System and .Prompt: Ollama runs it once per
    exchange, appends each reply, and sends SYSTEM only in the first one."""
    v2 = ollama.read(real / "Modelfile.mesh-master-v2")
    (rendered,) = modelfile.render_go(
        v2.first("template").args,
        [modelfile.ollama_messages(SHAPES["multi-turn"], "SYS")],
    )
    header = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    assert rendered.count(header) == 2  # BOS printed again mid-conversation
    assert rendered.startswith(header + "SYS<|eot_id|>")
    assert "I'll pass it on.<|begin_of_text|>" in rendered  # the reply has no <|eot_id|>
    assert rendered.endswith(
        "And to bob?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    )


def test_a_template_go_cannot_parse_is_an_error():
    with pytest.raises(MeshtuneError, match="Ollama cannot render this TEMPLATE"):
        modelfile.render_go("{{ range .Messages }}", [[{"role": "user", "content": "hi"}]])


def test_values_are_read_the_way_ollama_reads_them():
    mf = ollama.parse(
        "# comment\n"
        "from ./m.gguf\n"
        'TEMPLATE """{{ .Prompt }}\n'
        "  kept as written\n"
        '"""\n'
        "  PARAMETER stop <|im_end|>\n"
        'PARAMETER stop "<|im_start|>"\n'
        'SYSTEM "two\nlines"\n'
        "MESSAGE user hello there\n"
        "LICENSE MIT license text\n"
    )
    assert mf.first("model").args == "./m.gguf"
    assert mf.first("template").args == "{{ .Prompt }}\n  kept as written\n"
    assert mf.stops == ["<|im_end|>", "<|im_start|>"]
    assert mf.first("system").args == "two\nlines"
    assert mf.first("message").args == "user: hello there"
    assert mf.first("license").args == "MIT license text"
    assert [c.line for c in mf.commands] == [2, 3, 6, 7, 8, 10, 11]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('FROM ./m.gguf\nSYSTEM """never closed\n', "unterminated"),
        ("FROM ./m.gguf\nTEMPERATURE 0.5\n", "expected an instruction"),
        ("PARAMETER top_k 30\n", "no FROM line"),
    ],
)
def test_text_ollama_refuses_is_an_error_with_its_line(text, message):
    with pytest.raises(MeshtuneError, match=message):
        ollama.parse(text, "Modelfile")


def written(**overrides) -> str:
    args = {
        "gguf_name": "bot-Q8_0.gguf",
        "template": "{{ .Prompt }}",
        "system": DEFAULT_SYSTEM_PROMPT,
        "parameters": dict(ollama.DEFAULT_PARAMETERS),
        "stops": ("<|im_start|>", "<|im_end|>"),
        "header": "test",
    }
    return modelfile.build(**{**args, **overrides})


def test_a_written_modelfile_reads_back_to_what_was_written(smol_tokenizer):
    template = modelfile.template_for(smol_tokenizer)
    mf = ollama.parse(written(template=template))
    assert mf.first("model").args == "./bot-Q8_0.gguf"
    assert mf.first("template").args == template
    assert mf.first("system").args == DEFAULT_SYSTEM_PROMPT
    assert mf.stops == ["<|im_start|>", "<|im_end|>"]
    params = {p.name: p.args for p in mf.parameters if p.name != "stop"}
    assert params == {k: str(v) for k, v in ollama.DEFAULT_PARAMETERS.items()}
    assert set(params) <= set(ollama.PARAMETERS)


def test_the_defaults_are_the_v2_guides_modelfile_values_with_a_reply_sized_num_predict(real):
    guide = ollama.read(real / "Modelfile.mesh-master-v2")
    values = {p.name: p.args for p in guide.parameters if p.name != "stop"}
    assert {k: str(v) for k, v in ollama.DEFAULT_PARAMETERS.items()} == values
    # the guide's 200 tokens are Mesh Master's longest reply: 5 chunks of 160 bytes, ~4 bytes/token
    assert ollama.NUM_PREDICT == 5 * 160 // 4 == int(values["num_predict"])


def test_writing_refuses_unknown_parameters_bad_values_and_triple_quotes():
    with pytest.raises(MeshtuneError, match="'mirostat' is not a PARAMETER"):
        written(parameters={"mirostat": 2})
    with pytest.raises(MeshtuneError, match="'stop' is not a PARAMETER"):
        written(parameters={"stop": "x"})
    with pytest.raises(MeshtuneError, match=r"top_k 0\.5 is not a valid int"):
        written(parameters={"top_k": 0.5})
    with pytest.raises(MeshtuneError, match='SYSTEM contains """'):
        written(system='say """hi"""')


def codes(findings) -> list[str]:
    return [f.code for f in findings]


def test_check_finds_the_v2_modelfiles_relay_and_missing_gguf(real):
    findings = modelfile.check(real / "Modelfile.mesh-master-v2")
    assert codes(findings) == ["E304", "E305"]
    missing, relay = findings
    assert missing.line == 6 and "mesh-master-bot-v2-Q8_0.gguf does not exist" in missing.message
    assert "/relay" in relay.message and "<shortname> <message>" in relay.message


def test_check_with_a_chatml_gguf_finds_the_v2_stops_and_template_wrong_for_it(real):
    findings = modelfile.check(real / "Modelfile.mesh-master-v2", embedded_gguf())
    assert codes(findings) == ["E304", "E305", "E306", "W303", "E307"]
    assert '"<|im_end|>"' in findings[2].message
    assert "token 0 differs" in findings[4].message


def test_check_flags_parameters_ollama_rejects_or_ignores(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"")
    path = tmp_path / "Modelfile"
    path.write_text(
        "FROM ./m.gguf\n"
        "PARAMETER temprature 0.5\n"
        "PARAMETER top_k many\n"
        "PARAMETER mirostat 2\n"
        "PARAMETER num_predict -1\n"
    )
    findings = modelfile.check(path)
    assert codes(findings) == ["E304", "E302", "E303", "W304", "W305", "W301", "W302"]
    assert [f.line for f in findings[1:5]] == [2, 3, 4, 5]
    assert "not a model llama.cpp can load" in findings[0].message  # FROM is an empty file


def test_a_file_ollama_cannot_parse_is_one_finding(tmp_path):
    path = tmp_path / "Modelfile"
    path.write_text('FROM ./m.gguf\nSYSTEM """open\n')
    (finding,) = modelfile.check(path)
    assert finding.code == "E301" and finding.line == 2


def test_cli_check_exits_1_on_the_v2_modelfile_and_0_on_a_clean_one(cli, real, tmp_path):
    r = cli("modelfile", "check", real / "Modelfile.mesh-master-v2")
    assert r.code == 1
    assert "E305 SYSTEM names /relay" in r.out
    assert r.out.strip().endswith("2 errors, 0 warnings")
    gguf = tmp_path / "bot-Q8_0.gguf"
    gguf.write_bytes(b"")  # FROM must exist; not a GGUF, so no --gguf checks are asked for
    (tmp_path / "Modelfile").write_text(written(gguf_name="other.gguf").replace("other", "bot"))
    r = cli("modelfile", "check", tmp_path / "Modelfile", "--gguf", embedded_gguf())
    assert r.code == 1 and "E307" in r.out  # {{ .Prompt }} is not SmolLM2's template


def test_cli_check_of_a_missing_file_is_a_one_line_error(cli, tmp_path):
    r = cli("modelfile", "check", tmp_path / "nope")
    assert r.code == 2
    assert r.err.startswith("error: ") and r.err.count("\n") == 1
