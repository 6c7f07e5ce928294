"""The CUDA engine. On a CUDA GPU only (skipped elsewhere): packed micro batches with one
flex-attention call per layer, compiled decoder layers and the chunked loss at trained positions
give the loss and LoRA gradients of each conversation run alone through the model's own forward
(sdpa, full logits), within bf16 tolerance. Anywhere: the block mask and the padded lengths."""

import random

import pytest

torch = pytest.importorskip("torch")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

VOCAB = 512


def conversations(n: int, seed: int):
    """Token ids with a trained reply after a prompt, lengths 20-400: rows hold several."""
    from meshtune import chat

    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt, reply = rng.randint(10, 300), rng.randint(5, 100)
        ids = [rng.randrange(VOCAB) for _ in range(prompt + reply)]
        labels = [chat.IGNORE] * prompt + ids[prompt:]
        out.append(chat.Encoded(ids, labels, i, False))
    return out


@pytest.mark.parametrize("n", [1024, 3072])
def test_document_mask_computes_the_tiles_of_the_token_mask(n):
    """The block mask built from each tile's first and last conversation computes, and skips
    the mask in, the same tiles as flex attention's own builder over the full token mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    from meshtune.train.attention import document_mask

    rng = random.Random(n)
    lengths: list[int] = []  # conversations of 1 to 600 tokens, the last cut at n
    while sum(lengths) < n:
        lengths.append(min(rng.choice([1, 5, 127, 128, 129, 300, 600]), n - sum(lengths)))
    documents = torch.tensor([i for i, k in enumerate(lengths) for _ in range(k)])

    def same_conversation_causal(b, h, q, kv):
        return (documents[q] == documents[kv]) & (q >= kv)

    want = create_block_mask(same_conversation_causal, None, None, n, n, device="cpu")
    got = document_mask(documents)
    for name in ("kv", "full_kv", "q", "full_q"):
        counts = getattr(got, f"{name}_num_blocks")
        assert torch.equal(counts, getattr(want, f"{name}_num_blocks")), name
        for row, k in enumerate(counts[0, 0].tolist()):
            listed = [getattr(m, f"{name}_indices")[0, 0, row, :k] for m in (got, want)]
            assert sorted(listed[0].tolist()) == sorted(listed[1].tolist()), (name, row)
    assert int(got.full_kv_num_blocks.sum()) > 0  # whole tiles inside one conversation occur


def test_padded_lengths_waste_at_most_an_eighth_in_few_shapes():
    from meshtune.train.loss import padded_length

    lengths = [padded_length(n) for n in range(1, 70_000)]
    assert all(p >= n and p % 1024 == 0 for n, p in enumerate(lengths, 1))
    assert all(p - n < max(1024, n / 8) for n, p in enumerate(lengths, 1))
    assert len(set(lengths)) == 16 + 8 + 8 + 1  # up to 16k, 16-32k, 32-64k, then 73,728
    assert padded_length(44_500) == 45_056  # a full micro batch of the 1B shape's budget


def lora_llama(attention: str):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        attn_implementation=attention,
    )
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16)
    torch.manual_seed(1)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear")
    peft = get_peft_model(model, lora)
    with torch.no_grad():  # B is zero at init: perturb it so every LoRA gradient is non-zero
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    return peft


def lora_grads(model):
    return {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


@cuda
def test_packed_cuda_loss_and_lora_gradients_equal_each_conversation_alone():
    import torch.nn.functional as F

    from meshtune import chat
    from meshtune.train.attention import DOCUMENT_ATTENTION, register_document_attention
    from meshtune.train.loss import packed_causal_lm, to_device
    from meshtune.train.packing import join, micro_batches, pack

    register_document_attention()
    examples = conversations(24, seed=3)
    packed_model = lora_llama(DOCUMENT_ATTENTION)
    engine = packed_causal_lm(packed_model)
    batches = join(micro_batches(pack(examples, 1024, True, 5, share=False), 2, share=False), 3072)
    assert len(batches) >= 2 and all(len(b.segments) >= 4 for b in batches)
    packed = sum(engine(to_device(b, "cuda")) for b in batches)
    packed.backward()

    alone_model = lora_llama("sdpa")
    alone = torch.zeros((), device="cuda")
    for e in examples:
        logits = alone_model(input_ids=torch.tensor([e.input_ids], device="cuda")).logits[0]
        labels = torch.tensor(e.labels[1:], device="cuda")
        alone += F.cross_entropy(
            logits[:-1].float(), labels, ignore_index=chat.IGNORE, reduction="sum"
        )
    alone.backward()

    trained = sum(e.trained for e in examples)
    print(
        f"\nloss per trained token: packed {packed.item() / trained:.6f}, "
        f"one by one {alone.item() / trained:.6f}"
    )
    assert packed.item() == pytest.approx(alone.item(), rel=5e-3)
    got, want = lora_grads(packed_model), lora_grads(alone_model)
    assert got.keys() == want.keys() and len(got) == 3 * 7 * 2
    worst = max((got[n] - want[n]).norm() / want[n].norm() for n in want)
    print(f"worst relative difference of a LoRA gradient: {worst:.2e} over {len(got)} tensors")
    assert worst < 3e-2


CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def chatml_tokenizer(texts: list[str]):
    """A byte-level BPE trained here on `texts`, with ChatML's tokens and template: a real
    tokenizer without any model files."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        additional_special_tokens=specials,
    )
    tok.chat_template = CHATML
    return tok


def tiny_cuda_recipe(tmp_path, **overrides):
    """A 2-layer Llama with its own ChatML tokenizer and 160 short chats, as a recipe file."""
    import json

    import yaml
    from transformers import LlamaConfig, LlamaForCausalLM

    words = ["relay", "snr", "hops", "router", "channel", "antenna", "battery", "region"]
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"tell me about {words[i % 8]} number {i}"},
                {"role": "assistant", "content": f"{words[i % 8]} is fine. ok {i % 3}."},
            ]
        }
        for i in range(160)
    ]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = chatml_tokenizer([m["content"] for r in rows for m in r["messages"]])
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=len(tok),
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = tmp_path / "model"
    LlamaForCausalLM(config).save_pretrained(model)
    tok.save_pretrained(model)
    recipe = tmp_path / "recipe.yaml"
    keys = (
        dict(
            base_model=str(model),
            datasets=[{"path": str(data)}],
            sequence_len=256,
            micro_batch_size=2,
            max_steps=12,
            learning_rate=5e-3,
            adapter="lora",
            lora_r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            lora_target_linear=True,
            val_set_size=16,
            eval_steps=5,
            warmup_ratio=0.1,
            seed=7,
        )
        | overrides
    )
    recipe.write_text(yaml.safe_dump(keys))
    return recipe


@cuda
def test_train_on_cuda_runs_the_document_engine_end_to_end(tmp_path):
    """`train` on a CUDA GPU: the plan names the CUDA engine, the eval loss falls, the last step
    is evaluated and the adapters are written."""
    import json

    from meshtune.recipe import load_recipe
    from meshtune.train import Options, train

    recipe = tiny_cuda_recipe(tmp_path)
    lines: list[str] = []
    summary = train(load_recipe(recipe), Options(tmp_path / "run", progress=False), lines.append)
    print("\n".join(lines))
    assert any(line.startswith("engine            CUDA: one flex-attention") for line in lines)
    assert summary.device == "cuda" and summary.steps == 12
    assert summary.eval_loss_after < summary.eval_loss_before
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics if "eval_loss" in m] == [0, 5, 10, 12]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 13))
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()


@cuda
def test_a_full_fine_tune_on_cuda_trains_every_parameter_through_the_document_engine(tmp_path):
    """No adapter: the same CUDA engine trains the unwrapped model under bf16 autocast, its
    weights float32 (a small update rounds away in bf16), and saves it whole."""
    from safetensors.torch import load_file

    from meshtune.recipe import load_recipe
    from meshtune.train import Options, train

    recipe = tiny_cuda_recipe(tmp_path, adapter=None)
    summary = train(load_recipe(recipe), Options(tmp_path / "run", progress=False), print)
    assert summary.device == "cuda" and summary.fine_tune == "full" and summary.steps == 12
    assert summary.eval_loss_after < summary.eval_loss_before
    before = load_file(tmp_path / "model" / "model.safetensors")
    after = load_file(tmp_path / "run" / "adapter" / "model.safetensors")
    unmoved = [n for n in before if torch.equal(before[n].to(after[n].dtype), after[n])]
    assert before.keys() == after.keys() and unmoved == []
    if torch.cuda.is_bf16_supported():
        assert summary.precision == "bf16"
        assert {t.dtype for t in after.values()} == {torch.float32}


@cuda
def test_the_cpu_engine_on_a_gpu_takes_the_cpu_plans_steps(tmp_path):
    """`train --engine cpu` on a GPU: the CPU's batching (shared prompts computed once), so
    the steps are those the 2-core machine will take, while the arithmetic runs on CUDA."""
    from meshtune.recipe import load_recipe
    from meshtune.train import Options, make_plan, train

    loaded = load_recipe(tiny_cuda_recipe(tmp_path, max_steps=None, num_epochs=1))
    plan = make_plan(loaded, engine="cpu")
    lines: list[str] = []
    opts = Options(tmp_path / "run", progress=False, engine="cpu")
    summary = train(loaded, opts, lines.append)
    assert any(line.startswith("engine            CPU:") for line in lines)
    assert summary.device == "cuda" and summary.steps == plan.total_steps
