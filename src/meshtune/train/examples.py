"""The recipe's conversations, split and tokenized: what every later stage trains on."""

from collections.abc import Sequence
from typing import Any

from meshtune import chat, data
from meshtune.errors import MeshtuneError
from meshtune.recipe import Recipe
from meshtune.rendering import render


def load_splits(recipe: Recipe) -> tuple[list[data.Conversation], list[data.Conversation]]:
    """The recipe's datasets, split into train and held-out eval the way `data split` does,
    each with its share rendered as Mesh Master's request (the recipe's `mesh_master:`)."""
    if not recipe.datasets:
        raise MeshtuneError(
            "the recipe has no datasets; add `datasets: [{path: FILE}]` or pass --data"
        )
    convs: list[data.Conversation] = []
    for spec in recipe.datasets:
        convs += data.load_conversations(spec.path, spec)
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
    return [
        chat.encode(
            tokenizer,
            chat.with_system(c, recipe.system_prompt),
            recipe.sequence_len,
            c.line,
            source,
        )
        for c in convs
    ]
