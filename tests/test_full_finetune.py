"""Full fine-tuning: a recipe without `adapter` trains every parameter (or those
`unfrozen_parameters` names), as in Axolotl; the run saves whole models, exports them without a
merge and evaluates them with the hf backend. Tiny random llama models, on the CPU."""

import shutil

import pytest
import torch
from tests.tiny import tiny_recipe, write_recipe

from meshtune.errors import MeshtuneError
from meshtune.recipe import load_recipe
from meshtune.rundir import RunDir
from meshtune.train import Options, train


def quiet(*_):
    pass


def weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_llama):
    """A full fine-tune of the tiny llama: 8 steps, evaluated every 4, keeping the best."""
    root = tmp_path_factory.mktemp("full")
    recipe = tiny_recipe(root, tiny_llama, adapter=None, max_steps=8, load_best_model_at_end=True)
    summary = train(load_recipe(recipe), Options(root / "run", progress=False), quiet)
    return root / "run", summary


# ---------------------------------------------------------------- the recipe


def test_a_recipe_without_adapter_is_a_full_fine_tune_as_in_axolotl(tmp_path):
    assert load_recipe(write_recipe(tmp_path, learning_rate=1e-5)).recipe.full_fine_tune
    assert load_recipe(write_recipe(tmp_path, text="adapter:\n")).recipe.full_fine_tune
    path = write_recipe(tmp_path, adapter="lora")
    assert not load_recipe(path).recipe.full_fine_tune
    assert load_recipe(path, ["adapter="]).recipe.full_fine_tune  # `--set adapter=` unsets it


def test_keys_that_cannot_work_with_the_method_are_errors_naming_the_fix(tmp_path):
    with pytest.raises(MeshtuneError, match="unfrozen_parameters is for a full fine-tune"):
        load_recipe(write_recipe(tmp_path, adapter="lora", unfrozen_parameters=["model.norm"]))
    with pytest.raises(MeshtuneError, match=r"there is no adapter.*add `adapter: qlora`"):
        load_recipe(write_recipe(tmp_path, load_in_4bit=True))
    with pytest.raises(
        MeshtuneError, match=r"unfrozen_parameters: .*'layers.\(1' is not a regular"
    ):
        load_recipe(write_recipe(tmp_path, unfrozen_parameters=["layers.(1"]))


def test_plan_says_full_fine_tune_and_counts_the_trainable_parameters(cli, tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    total = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_llama).parameters())
    r = cli("plan", tiny_recipe(tmp_path, tiny_llama, adapter=None))
    assert r.code == 0, r.err
    assert f"method            full fine-tune: {total:,} of {total:,} parameters train" in r.out
    # LoRA keys are ignored as Axolotl ignores them, but a recipe written for meshtune's old
    # LoRA default must not change method unnoticed
    ignored = "lora_r, lora_alpha, lora_dropout, lora_target_linear ignored"
    assert f"WARNING: no adapter: a full fine-tune, as in Axolotl; {ignored}" in r.out
    r = cli("plan", tiny_recipe(tmp_path, tiny_llama, adapter=None, unfrozen_parameters=["x"]))
    assert r.code == 2 and "unfrozen_parameters ['x'] match no parameter" in r.err
    assert (
        "method            lora adapter (r 4, alpha 8)"
        in cli("plan", tiny_recipe(tmp_path, tiny_llama)).out
    )


# Llama-3.2-1B's shape (1.24B parameters, as the guide's recipe trains it) and a 24 GB card
LLAMA_32_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16}
CARD_24GB = 23 * 10**9


def test_a_full_fine_tune_sizes_micro_batches_after_its_weights_gradients_and_adamw_state(
    tmp_path, tiny_llama
):
    from meshtune.train.plan import full_fine_tune_bytes, token_budget, trainable_parameters

    # float32 weights and autocast's 16-bit copies: 6 bytes a parameter; a float32 gradient and
    # AdamW's two moments: 12 more for each one that trains
    every = load_recipe(tiny_recipe(tmp_path, tiny_llama, adapter=None)).recipe
    trained, total = trainable_parameters(every)
    assert trained == total and full_fine_tune_bytes(every) == 18 * total
    one_layer = tiny_recipe(
        tmp_path, tiny_llama, adapter=None, unfrozen_parameters=["model.layers.0."]
    )
    trained, _ = trainable_parameters(load_recipe(one_layer).recipe)
    assert 0 < trained < total
    assert full_fine_tune_bytes(load_recipe(one_layer).recipe) == 6 * total + 12 * trained

    lora = token_budget(LLAMA_32_1B, 2048, CARD_24GB)
    half_billion = token_budget(LLAMA_32_1B, 2048, CARD_24GB, held_bytes=18 * 500_000_000)
    assert (lora, half_billion) == (7168, 4096)  # activations fit in what the state leaves
    # the whole 1B model: 22.2 GB of state leaves no room for a row of 2048 tokens (3.2 GB)
    with pytest.raises(MeshtuneError, match=r"holds about 22.2 GB .* row of 2048 tokens about 3.2"):
        token_budget(LLAMA_32_1B, 2048, CARD_24GB, held_bytes=18 * 1_235_814_400)


# ---------------------------------------------------------------- training


def test_a_full_fine_tune_lowers_eval_loss_and_moves_every_parameter(full_run, tiny_llama):
    from meshtune.cli import train_line

    run, summary = full_run
    assert summary.fine_tune == "full"
    assert train_line(summary, run).endswith(f"best model: {run / 'best'}")
    assert summary.eval_loss_after < summary.eval_loss_before
    before, after = weights(tiny_llama), weights(run / "adapter")
    assert before.keys() == after.keys()
    unmoved = [name for name in before if torch.equal(before[name], after[name])]
    assert unmoved == []


def test_the_saved_model_loads_on_its_own_and_its_recipe_loads_back(full_run):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, summary = full_run
    best = run / summary.best_adapter
    assert not (best / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(best)
    ids = AutoTokenizer.from_pretrained(best)("relay?", return_tensors="pt").input_ids
    assert model(ids).logits.isfinite().all()
    recipe = load_recipe(RunDir(run).recipe).recipe  # no LoRA keys written for a full run
    assert recipe.full_fine_tune and recipe.max_steps == 8


def test_unfrozen_parameters_train_those_parameters_alone(tmp_path, tiny_llama):
    recipe = tiny_recipe(
        tmp_path, tiny_llama, adapter=None, max_steps=2, unfrozen_parameters=[r"model\.layers\.1\."]
    )
    train(load_recipe(recipe), Options(tmp_path / "run", progress=False), quiet)
    before, after = weights(tiny_llama), weights(tmp_path / "run" / "adapter")
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved == {name for name in before if name.startswith("model.layers.1.")}


def test_a_checkpoint_restores_the_whole_model_and_its_optimizer(tmp_path, tiny_llama):
    from transformers import AutoModelForCausalLM

    from meshtune.recipe import Recipe
    from meshtune.train import model as models
    from meshtune.train.outputs import restore_checkpoint, save_checkpoint
    from meshtune.train.state import TrainState

    recipe = Recipe(base_model=str(tiny_llama), weight_decay=0.1)

    def setup():
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
        optimizer = models.optimizer(recipe, list(model.parameters()), False, quiet)
        return model, optimizer, models.scheduler(recipe, optimizer, 0, 10)

    trained, optimizer, scheduler = setup()
    trained(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    scheduler.step()
    save_checkpoint(tmp_path, trained, optimizer, scheduler, TrainState(step=1))
    assert (tmp_path / "checkpoints" / "step-000001" / "model" / "model.safetensors").is_file()
    fresh, fresh_optimizer, fresh_scheduler = setup()
    state = restore_checkpoint(tmp_path, fresh, fresh_optimizer, fresh_scheduler, quiet)
    assert state.step == 1
    for (name, want), got in zip(
        trained.state_dict().items(), fresh.state_dict().values(), strict=True
    ):
        assert torch.equal(want, got), name
    saved, restored = optimizer.state_dict(), fresh_optimizer.state_dict()
    assert len(restored["state"]) == len(list(trained.parameters()))
    for i, moments in saved["state"].items():
        assert torch.equal(moments["exp_avg_sq"], restored["state"][i]["exp_avg_sq"])
    assert fresh_scheduler.state_dict() == scheduler.state_dict()
    (tmp_path / "checkpoints" / "step-000001" / "model" / "model.safetensors").unlink()
    with pytest.raises(MeshtuneError, match=r"weights missing.*without --resume"):
        restore_checkpoint(tmp_path, fresh, fresh_optimizer, fresh_scheduler, quiet)


# ---------------------------------------------------------------- export and evaluation


def test_export_converts_the_trained_model_without_a_merge_and_its_logits_match(full_run, tmp_path):
    from transformers import AutoModelForCausalLM

    from meshtune import export

    run = shutil.copytree(full_run[0], tmp_path / "run")
    _, verification = export.export(run, quant="F32", name="full")
    got = {c.name: c for c in verification.checks}
    for name in ("metadata", "tokens", "logits", "modelfile"):
        assert got[name].ok, (name, got[name].detail)
    ids = torch.tensor([[1, 9690, 198, 16, 28, 30, 2]])
    merged = AutoModelForCausalLM.from_pretrained(run / "merged")
    trained = AutoModelForCausalLM.from_pretrained(run / "best")
    assert merged.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, trained(ids).logits)


def test_the_hf_backend_evaluates_the_full_model_without_an_adapter(full_run):
    from transformers import AutoModelForCausalLM

    from meshtune.evaluate.backends import open_backend, resolve_model

    run, _ = full_run
    spec = resolve_model(str(run), "hf")
    assert spec.adapter is None and spec.hf_name == str(run / "best")
    backend = open_backend(spec, threads=2)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        want = AutoModelForCausalLM.from_pretrained(run / "best")(ids).logits
        torch.testing.assert_close(backend.model(ids).logits, want)


def test_weight_decay_spares_norm_weights_as_the_hugging_face_trainer_does(tiny_llama):
    from transformers import AutoModelForCausalLM

    from meshtune.train.model import decay_groups

    model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    decayed, spared = decay_groups(list(model.parameters()), 0.1)
    name = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
    assert sorted(name[id(p)] for p in spared["params"]) == [
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight",
    ]
    assert all(p.ndim == 2 for p in decayed["params"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_under_mixed_precision_a_full_fine_tune_keeps_float32_weights_and_lora_a_16_bit_base(
    tmp_path, tiny_llama, precision
):
    """Autocast computes in 16 bits either way; a full fine-tune's weights, the ones the
    optimizer updates, stay float32 (a 1e-4 step rounds away in bf16), while LoRA's frozen base
    is loaded in 16 bits and its adapter kept in float32."""
    from meshtune.train.model import load_model

    def loaded(adapter):
        recipe = load_recipe(tiny_recipe(tmp_path, tiny_llama, adapter=adapter)).recipe
        return load_model(recipe, tiny_llama, False, precision, False, False, quiet, True)

    half = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert {p.dtype for p in loaded(None).parameters()} == {torch.float32}
    lora = dict(loaded("lora").named_parameters())
    assert {p.dtype for n, p in lora.items() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in lora.items() if "lora_" not in n} == {half}


def test_flex_attention_gets_its_inputs_in_the_autocast_dtype():
    """Under bf16 autocast with float32 weights, rotary embedding leaves query and key in
    float32 beside a bf16 value; the CUDA engine's attention hands flex attention one dtype."""
    from meshtune.train.attention import in_autocast_dtype

    q, k, v = torch.ones(2, dtype=torch.float32), torch.ones(2), torch.ones(2, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert [t.dtype for t in in_autocast_dtype(q, k, v)] == [torch.bfloat16] * 3
    assert [t.dtype for t in in_autocast_dtype(q, k, v)] == [torch.float32] * 2 + [torch.bfloat16]
