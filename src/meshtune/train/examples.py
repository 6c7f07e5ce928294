"""The recipe's conversations, split and tokenized: what every later stage trains on."""

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from meshtune import chat, data
from meshtune.chat import IGNORE
from meshtune.errors import MeshtuneError
from meshtune.meshmaster.truncation import cut_trained_row
from meshtune.recipe import Recipe
from meshtune.rendering import NUM_CTX_KEY, render


def load_splits(recipe: Recipe) -> tuple[list[data.Conversation], list[data.Conversation]]:
    """The recipe's datasets, split into train and held-out eval the way `data split` does,
    each with its share rendered as Mesh Master's request (the recipe's `mesh_master:`)."""
    if not recipe.datasets:
        raise MeshtuneError(
            "the recipe has no datasets; add `datasets: [{path: FILE}]` or pass --data"
        )
    convs: list[data.Conversation] = []
    for spec in recipe.datasets:
        convs += spec.shard(data.load_conversations(spec.path, spec))
    if recipe.val_set_size <= 0:
        train, held_out = convs, []
    else:
        size = recipe.val_set_size
        if size >= len(convs):
            raise MeshtuneError(
                f"val_set_size {size:g}: the datasets hold only {len(convs)} conversations, so "
                "none would be left to train on; give a fraction (e.g. 0.15) or a smaller count"
            )
        train, held_out = data.split(convs, size if size < 1 else size / len(convs), recipe.seed)
    spec = recipe.mesh_master
    return render(train, spec, recipe.seed), render(held_out, spec, recipe.seed + 1)


def encode_all(
    tokenizer: Any, convs: Sequence[data.Conversation], recipe: Recipe, source: str
) -> list[chat.Encoded]:
    adds_bos = chat.adds_bos(tokenizer)
    out = []
    for c in convs:
        num_ctx = c.meta.get(NUM_CTX_KEY)  # set on rows rendered as the bot's request
        enc = chat.encode(
            tokenizer,
            chat.with_system(c, recipe.system_prompt),
            None if num_ctx else recipe.sequence_len,
            c.line,
            source,
        )
        if num_ctx:  # train on what Ollama leaves of the request
            # Not cut to sequence_len: the model must see the request as the bot sends it.
            # One longer than sequence_len (a `/meshtastic` request is ~1,000 tokens, bounded
            # by num_ctx) trains as a row of its own, so short chats keep their short rows.
            ids, labels = cut_trained_row(enc.input_ids, enc.labels, num_ctx, adds_bos, IGNORE)
            enc = replace(enc, input_ids=ids, labels=labels)
        out.append(enc)
    return out
