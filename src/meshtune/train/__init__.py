"""LoRA fine-tuning: the plan (plan.py), the data (examples.py, packing.py), attention over
packed conversations (attention.py), the loss (loss.py), the model (model.py), the loop
(loop.py) and how it writes its files (outputs.py)."""

from meshtune.train.attention import PACKED_ATTENTION, register_packed_attention
from meshtune.train.examples import encode_all, load_splits
from meshtune.train.loop import Options, train
from meshtune.train.loss import micro_loss
from meshtune.train.packing import Batch, flatten, micro_batches, pack, shared_len
from meshtune.train.plan import MIN_STEPS_PER_EPOCH, Plan, check_tokens, make_plan, warmup_steps

__all__ = [
    "MIN_STEPS_PER_EPOCH",
    "PACKED_ATTENTION",
    "Batch",
    "Options",
    "Plan",
    "check_tokens",
    "encode_all",
    "flatten",
    "load_splits",
    "make_plan",
    "micro_batches",
    "micro_loss",
    "pack",
    "register_packed_attention",
    "shared_len",
    "train",
    "warmup_steps",
]
