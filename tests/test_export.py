"""Export: a merged GGUF that llama.cpp runs like the trained model, a Modelfile whose TEMPLATE
renders the trained prompt, and the proof, on tiny random llama runs built here (and the
embedded SmolLM2-135M in a slow test). Ollama cannot run here: `deploy` is tested with a
stand-in `ollama` executable."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.conftest import run_main
from tests.tiny import (
    llama32_tokenizer_from,
    lora_run,
    stand_in_ollama,
    tiny_base,
    write_summary,
)

from meshtune import export, ollama
from meshtune.errors import MeshtuneError
from meshtune.export import config_edit, gguf, modelfile, proof
from meshtune.export.gguf import llama as gguf_llama
from meshtune.meshmaster import OPTIONS
from meshtune.meshmaster.knowledge import OWN_KNOWLEDGE
from meshtune.rundir import RunDir

# ---------------------------------------------------------------------------------------------
# Runs built in the tests: a random tiny llama base, a LoRA adapter with perturbed B (so merging
# changes the model), and the files `meshtune train` writes.


def checks(run: Path) -> dict[str, dict]:
    return {c["name"]: c for c in json.loads((run / "verify.json").read_text())["checks"]}


@pytest.fixture(scope="module")
def chatml(tmp_path_factory, smol_tokenizer):
    """A random chatml run (SmolLM2's tokenizer, untied output) exported as F32 by the CLI. A
    random model never ends its turn, so the export fails its stop check and exits 1."""
    root = tmp_path_factory.mktemp("chatml")
    base = tiny_base(root / "base", smol_tokenizer)
    run = lora_run(root, base, str(root / "base"), "chatml")
    code, out, err = run_main("export", run, "--quant", "F32", "--name", "tiny")
    return run, code, out, err


@pytest.fixture(scope="module")
def llama32_tokenizer(smol_folder):
    return llama32_tokenizer_from(smol_folder)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory, llama32_tokenizer):
    """A llama3-family run with Llama-3.2's rope scaling and tied embeddings, exported F32."""
    root = tmp_path_factory.mktemp("llama3")
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 256}  # fmt: skip
    base = tiny_base(root / "base", llama32_tokenizer, tie=True, rope=rope)
    run = lora_run(root, base, str(root / "base"), "llama3")
    info, verification = export.export(run, quant="F32", name="tiny-llama3")
    return run, info, verification


# ---------------------------------------------------------------------------------------------
# What export writes


def test_export_writes_merged_folder_gguf_modelfile_and_deploy_note(chatml):
    run, _, out, _ = chatml
    assert (run / "merged" / "config.json").is_file()
    assert (run / "tiny-F32.gguf").is_file()
    mf = ollama.read(run / "Modelfile")
    assert mf.first("model").args == "./tiny-F32.gguf"  # relative to the Modelfile
    assert mf.stops == ["<|im_start|>", "<|im_end|>"]
    assert "/relay" not in mf.first("system").args
    deploy = (run / "DEPLOY.md").read_text()
    assert "ollama create tiny -f Modelfile" in deploy
    assert '"ollama_model": "tiny",' in deploy
    assert "override the Modelfile" in deploy and "num_predict 80" in deploy
    assert "Modelfile meshtastic_knowledge.txt pi@" in deploy  # copied with the model
    assert '"ollama_num_ctx": 2048' in deploy
    knowledge = run / "meshtastic_knowledge.txt"
    assert knowledge.read_bytes() == OWN_KNOWLEDGE.read_bytes()
    info = json.loads((run / "export.json").read_text())
    assert info["gguf"] == "tiny-F32.gguf" and info["verified"] is False
    assert info["knowledge"] == "meshtastic_knowledge.txt"
    assert f"wrote {run / 'merged'}" in out


def test_the_merged_folder_is_the_adapter_merged_into_float32_weights(chatml):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, *_ = chatml
    base_dir = RunDir(run).load_summary().base_model
    ids = torch.tensor([[1, 9690, 198, 16, 28, 30, 2]])
    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    assert merged.dtype == torch.float32
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base_dir), run / "best"
    )
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    with torch.no_grad():
        got, want, before = (m(ids).logits for m in (merged, adapted, base))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (got - before).abs().max() > 0.1  # the adapter changed the model


def gguf_fields(path: Path) -> tuple[dict, dict]:
    import gguf

    reader = gguf.GGUFReader(path)
    skip = {"tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges"}
    fields = {k: f.contents() for k, f in reader.fields.items() if k not in skip}
    tensors = {t.name: t.tensor_type.name for t in reader.tensors}
    return fields, tensors


def test_the_gguf_keeps_the_tokenizer_chat_template_and_end_of_turn_as_eos(chatml, smol_tokenizer):
    run, *_ = chatml
    fields, tensors = gguf_fields(run / "tiny-F32.gguf")
    eot = smol_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert fields["general.architecture"] == "llama"
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.eot_token_id"] == eot
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.chat_template"] == smol_tokenizer.chat_template
    assert "output.weight" in tensors  # this model's output is not tied
    assert {t for n, t in tensors.items() if n.endswith("norm.weight")} == {"F32"}


def test_verify_proves_tokens_template_and_logits_and_fails_a_model_that_never_ends_its_turn(
    chatml,
):
    run, code, out, err = chatml
    got = checks(run)
    assert [name for name, c in got.items() if c["ok"] is not True] == ["stops"]
    assert got["tokens"]["data"]["chats"] == 11 and got["tokens"]["data"]["tokens"] > 11 * 20
    assert got["template"]["data"]["chats"] == 11
    logits = got["logits"]["data"]
    assert logits["top1_agreement"] >= 0.99 and logits["max_abs_diff"] <= logits["bound"]
    replies = got["stops"]["data"]["replies"]
    assert got["stops"]["data"]["limit"] == OPTIONS["num_predict"]  # the bot's own limit
    assert [r["stopped"] for r in replies] == [False] * 4
    assert all(len(r["ids"]) == OPTIONS["num_predict"] for r in replies)
    assert code == 1
    assert "FAIL    stops" in out and "How do I relay to alice?" in out
    assert "verification FAILED" in err


def test_a_gguf_without_llama_cpps_qk_permutation_fails_the_logits_check(
    chatml, tmp_path, monkeypatch
):
    run, *_ = chatml
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("*.gguf"))
    monkeypatch.setattr(gguf_llama, "_permute", lambda w, n_head: w)
    gguf.write_gguf(copy / "merged", copy / "tiny-F32.gguf", "F32", "tiny")
    export.verify(copy)
    logits = checks(copy)["logits"]
    assert logits["ok"] is False
    assert logits["data"]["top1_agreement"] < 0.9
    assert logits["data"]["max_abs_diff"] > logits["data"]["bound"]


def test_every_offered_type_is_written_as_that_type_and_runs_in_llama_cpp(chatml, tmp_path):
    from llama_cpp import Llama

    run, *_ = chatml
    sizes = {}
    for quant in gguf.QUANTS:
        path = tmp_path / f"tiny-{quant}.gguf"
        gguf.write_gguf(run / "merged", path, quant, "tiny")
        _, tensors = gguf_fields(path)
        assert {t for n, t in tensors.items() if n.endswith("norm.weight")} == {"F32"}
        if quant in gguf.WRITER_QUANTS:
            assert tensors["blk.0.attn_q.weight"] == tensors["token_embd.weight"] == quant
        else:  # llama.cpp's quantizer: 4-bit blocks where rows allow
            assert tensors["blk.0.attn_q.weight"].startswith(("Q4", "Q5", "Q6", "Q8"))
        llm = Llama(str(path), n_ctx=64, logits_all=True, n_threads=1, verbose=False)
        llm.eval([1, 9690, 198, 28, 30])
        assert np.isfinite(np.asarray(llm.scores[:5])).all()
        sizes[quant] = path.stat().st_size
    assert sizes["F32"] > sizes["F16"] == sizes["BF16"] > sizes["Q8_0"] > sizes["Q4_0"]


def test_an_unknown_type_is_refused_before_any_work(chatml, tmp_path):
    with pytest.raises(MeshtuneError, match="choose one of F32, F16, BF16, Q8_0, Q4_0"):
        gguf.write_gguf(chatml[0] / "merged", tmp_path / "x.gguf", "Q3_K", "x")


# ---------------------------------------------------------------------------------------------
# A model that ends its turns, tied embeddings


def test_a_model_that_ends_its_turns_passes_every_check(stopper, cli):
    run, info, verification = stopper
    assert verification.ok and info.verified
    assert all(c.ok for c in verification.checks)
    replies = checks(run)["stops"]["data"]["replies"]
    assert all(r["stopped"] and r["ended_with"] == "<|im_end|>" for r in replies)
    _, tensors = gguf_fields(run / info.gguf)
    assert "output.weight" not in tensors  # tied, like SmolLM2: llama.cpp reuses token_embd
    r = cli("verify", run)
    assert r.code == 0 and r.out.strip().endswith("verified")


def test_export_records_time_and_peak_memory(stopper):
    run, info, _ = stopper
    recorded = json.loads((run / "export.json").read_text())
    assert recorded["seconds"] > 0 and recorded["peak_rss_bytes"] > recorded["merged_bytes"]
    assert recorded["gguf_bytes"] == (run / info.gguf).stat().st_size


# ---------------------------------------------------------------------------------------------
# The llama3 family


def test_a_llama3_run_exports_with_eot_metadata_one_bos_and_its_stops(llama3, llama32_tokenizer):
    run, info, verification = llama3
    got = {c.name: c for c in verification.checks}
    assert [n for n, c in got.items() if not c.ok] == ["stops"]  # random: never ends its turn
    fields, tensors = gguf_fields(run / info.gguf)
    eot = llama32_tokenizer.convert_tokens_to_ids("<|eot_id|>")
    assert fields["tokenizer.ggml.eos_token_id"] == fields["tokenizer.ggml.eot_token_id"] == eot
    assert fields["tokenizer.ggml.add_bos_token"] is True  # so the TEMPLATE prints no BOS
    assert "rope_freqs.weight" in tensors  # Llama-3.2's rope scaling
    mf = ollama.read(run / "Modelfile")
    assert mf.stops == ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    assert "<|begin_of_text|>" not in mf.first("template").args


def test_the_v2_modelfile_against_a_llama3_gguf_shows_its_double_bos(llama3, real):
    run, info, _ = llama3
    findings = modelfile.check(real / "Modelfile.mesh-master-v2", run / info.gguf)
    codes = [f.code for f in findings]
    assert codes == ["E304", "E305", "W303", "W303", "E307"]  # it has <|eot_id|>, not headers
    assert "token 1 differs" in findings[-1].message  # a second BOS right after the first


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing half-written


def test_an_unsupported_architecture_is_refused_naming_what_is_supported(
    tmp_path, cli, smol_tokenizer
):
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    base = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=100))
    base.save_pretrained(tmp_path / "gpt2")
    smol_tokenizer.save_pretrained(tmp_path / "gpt2")  # a complete model folder, of another kind
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["c_attn"]))
    peft.save_pretrained(tmp_path / "run" / "best")
    write_summary(tmp_path / "run", str(tmp_path / "gpt2"), best_adapter="best")
    r = cli("export", tmp_path / "run")
    assert r.code == 2
    assert "architecture GPT2LMHeadModel cannot be exported" in r.err
    assert "supported: llama (SmolLM2, Llama-3.x)" in r.err
    assert not (tmp_path / "run" / "merged").exists()


@pytest.mark.parametrize(
    ("args", "setup", "message"),
    [
        (["--quant", "Q3"], None, "--quant Q3: not offered"),
        (["--name", "Mesh Bot"], None, "--name 'Mesh Bot'"),
        ([], "no-summary", "train_summary.json: missing"),
        ([], "no-adapter", "no LoRA adapter"),
        ([], "bad-ollama", "'mirostat' is not a PARAMETER"),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(cli, tmp_path, args, setup, message):
    from safetensors.numpy import save_file

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 8}')
    save_file(
        {"lora_A.weight": np.zeros((8, 4), np.float32)}, run / "best" / "adapter_model.safetensors"
    )
    write_summary(run, "smollm2-135m", best_adapter="best")
    if setup == "no-summary":
        RunDir(run).summary.unlink()
    elif setup == "no-adapter":
        shutil.rmtree(run / "best")
    elif setup == "bad-ollama":
        (run / "recipe.yaml").write_text(yaml.safe_dump({"ollama": {"mirostat": 2}}))
    before = sorted(p.name for p in run.iterdir())
    r = cli("export", run, *args)
    assert r.code == 2
    assert message in r.err and r.err.startswith("error: ") and r.err.count("\n") == 1
    assert sorted(p.name for p in run.iterdir()) == before


def test_without_go_the_template_check_is_reported_as_not_run_not_as_passed(monkeypatch):
    monkeypatch.setattr(modelfile, "go_available", lambda: False)
    check = proof._check_template(None, "{{ .Prompt }}", [], [])
    assert check.ok is None and check.status == "skipped" and "go" in check.detail


def test_verify_of_a_run_never_exported_says_to_export(cli, tmp_path):
    r = cli("verify", tmp_path)
    assert r.code == 2 and "run `meshtune export` first" in r.err


# ---------------------------------------------------------------------------------------------
# Deploy (Ollama cannot run here: a stand-in executable records its arguments)


def test_deploy_with_a_stand_in_ollama_creates_the_model_and_sets_only_the_deploy_keys(
    stopper, real, tmp_path, monkeypatch, cli
):
    run, *_ = stopper
    log = stand_in_ollama(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "config.json"
    shutil.copy(real / "mesh-master-config.json", config)
    original = config.read_text()
    r = cli("deploy", run, "--name", "mesh-bot", "--mesh-master-config", config)
    assert r.code == 0, r.err
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert call["argv"] == ["create", "mesh-bot", "-f", str((run / "Modelfile").resolve())]
    assert Path(call["cwd"]) == run.resolve()
    installed = tmp_path / "meshtastic_knowledge.mesh-bot.txt"  # the run's knowledge file
    assert installed.read_bytes() == (run / "meshtastic_knowledge.txt").read_bytes()
    assert config.read_text() == original.replace('"llama3.2:1b"', '"mesh-bot"').replace(
        "{\n", "{\n  " + f'"meshtastic_knowledge_file": {json.dumps(str(installed))},\n', 1
    )
    (backup,) = tmp_path.glob("config.json.*.bak")
    assert backup.read_text() == original
    assert "ran: ollama create mesh-bot" in r.out


def test_deploy_without_ollama_prints_the_command(stopper, tmp_path, monkeypatch, cli):
    run, *_ = stopper
    monkeypatch.setenv("PATH", str(tmp_path))  # no ollama here
    r = cli("deploy", run, "--name", "mesh-bot")
    assert r.code == 0
    assert "ollama is not on PATH" in r.out
    assert f"ollama create mesh-bot -f {(run / 'Modelfile').resolve()}" in r.out


def test_a_failing_stand_in_ollama_create_is_an_error(stopper, tmp_path, monkeypatch, cli):
    stand_in_ollama(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    r = cli("deploy", stopper[0], "--name", "mesh-bot")
    assert r.code == 2 and "ollama create failed (exit 1)" in r.err


def test_deploy_refuses_a_run_that_failed_verification_unless_forced(chatml, tmp_path, cli):
    run, *_ = chatml
    r = cli("deploy", run, "--name", "tiny")
    assert r.code == 2 and "verification failed (stops)" in r.err and "--force" in r.err
    assert cli("deploy", run, "--name", "tiny", "--force").code == 0


def test_ollama_model_is_added_when_the_config_has_none(tmp_path):
    config = tmp_path / "config.json"
    config.write_text('{\n    "chunk_size": 160,\n    "x": {"ollama_model": "nested"}\n}\n')
    config.write_bytes(config_edit.edit(config.read_bytes(), {"ollama_model": "mesh-bot"}, "c"))
    assert config.read_text() == (
        '{\n    "ollama_model": "mesh-bot",\n    "chunk_size": 160,\n'
        '    "x": {"ollama_model": "nested"}\n}\n'
    )


def test_a_config_that_is_not_json_is_left_alone(tmp_path):
    config = tmp_path / "config.json"
    config.write_text("{not json")
    with pytest.raises(MeshtuneError, match="not readable JSON"):
        config_edit.plan_config_edit(config, "mesh-bot")
    assert config.read_text() == "{not json" and not list(tmp_path.glob("*.bak"))


# ---------------------------------------------------------------------------------------------
# The embedded model, end to end


@pytest.mark.slow
@pytest.mark.real
def test_the_embedded_model_exports_in_under_a_minute_within_3x_its_size(tmp_path, smol_folder):
    """The README's numbers: export time and peak memory of a SmolLM2-135M run, measured in a
    separate process. The untrained model may not end every reply; the other checks must pass."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(smol_folder)
    run = lora_run(tmp_path, base, "smollm2-135m", "chatml", std=0.002)
    del base
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "meshtune", "export", str(run), "--name", "smol"],
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - started
    print(proc.stdout, proc.stderr)
    info = json.loads((run / "export.json").read_text())
    peak = info["peak_rss_bytes"]  # the export process's own high-water mark
    got = checks(run)
    for name in ("metadata", "tokens", "template", "logits", "modelfile"):
        assert got[name]["ok"], got[name]["detail"]
    assert proc.returncode == (0 if got["stops"]["ok"] else 1)
    print(f"export wall {wall:.1f} s, peak RSS {peak / 1e9:.2f} GB, merged {info['merged_bytes']}")
    print(json.dumps(got["logits"]["data"]), json.dumps(got["stops"]["data"]["replies"])[:2000])
    assert peak < 3 * info["merged_bytes"]
    assert info["seconds"] < 60
