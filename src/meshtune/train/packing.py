"""Conversations packed into rows and micro batches without padding.

CPU rows compute each shared system-prompt prefix once (`shared_len`); CUDA rows keep every
conversation whole, and `join` concatenates micro batches up to a token budget so that one
attention call per layer covers as many tokens as the card holds.
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass

from meshtune import chat


def shared_len(root: chat.Encoded, e: chat.Encoded) -> int:
    """How many leading tokens `e` can take from the row's first conversation instead of
    computing them again: their common prefix (the system prompt block every row renders), cut
    before `e`'s first trained target. Keys and values at those positions are the same in both
    conversations, since attention is causal."""
    first_trained = next(i for i, label in enumerate(e.labels) if label != chat.IGNORE)
    limit = min(len(root.input_ids), first_trained - 1)
    n = 0
    while n < limit and root.input_ids[n] == e.input_ids[n]:
        n += 1
    return n


def pack(
    examples: Sequence[chat.Encoded],
    seq_len: int,
    packing: bool,
    seed: int | None,
    share: bool = True,
) -> list[list[chat.Encoded]]:
    """Rows of at most `seq_len` computed tokens: a row's first conversation in full, each later
    one without the prefix it shares with the first (unless not `share`). Shuffled by `seed`
    (None: file order), then filled in order, so each epoch sees a different but reproducible
    arrangement."""
    order = list(examples)
    rng = random.Random(seed)
    if seed is not None:
        rng.shuffle(order)
    if not packing:
        return [[e] for e in order]
    if share:
        order = by_prefix(order)
    rows: list[list[chat.Encoded]] = []
    used = seq_len + 1
    for e in order:
        cost = len(e.input_ids) - (shared_len(rows[-1][0], e) if rows and share else 0)
        if used + cost > seq_len:
            rows.append([])
            used, cost = 0, len(e.input_ids)
        rows[-1].append(e)
        used += cost
    if share and seed is not None:
        rng.shuffle(rows)  # grouped rows, in random order
    return rows


# Tokens past the prefix every example shares that two examples must also share to be packed
# together: short enough that a system block differs within it from a plain question.
PREFIX_GROUP = 32


def by_prefix(examples: Sequence[chat.Encoded]) -> list[chat.Encoded]:
    """`examples` with those that share a long prefix beyond the one all of them share brought
    together, level by level (Mesh Master's system block, then each persona's text), so packed
    rows compute it once; otherwise the order is kept."""
    if len(examples) < 2:
        return list(examples)
    first = examples[0].input_ids
    common = min(len(e.input_ids) for e in examples)
    for e in examples[1:]:
        common = next(
            (i for i, (a, b) in enumerate(zip(first, e.input_ids, strict=False)) if a != b),
            common,
        )
    groups: dict[tuple[int, ...], list[chat.Encoded]] = {}
    for e in examples:
        groups.setdefault(tuple(e.input_ids[: common + PREFIX_GROUP]), []).append(e)
    if len(groups) == 1:
        return list(examples)
    return [e for group in groups.values() for e in by_prefix(group)]


@dataclass(slots=True)
class Batch:
    """Rows flattened into one padding-free sequence (batch dimension 1)."""

    input_ids: list[int]
    position_ids: list[int]
    targets: list[int]  # the label of the next token in the same conversation, else IGNORE
    # (start, end, root, shared): tokens [start, end) attend to the `shared` tokens from `root`
    # (their row's first conversation), then causally to themselves
    segments: list[tuple[int, int, int, int]]
    tokens: int  # conversation tokens represented, shared prefixes counted in each conversation

    @property
    def trained(self) -> int:
        return sum(t != chat.IGNORE for t in self.targets)


def flatten(rows: Sequence[Sequence[chat.Encoded]], share: bool = True) -> Batch:
    batch = Batch([], [], [], [], 0)
    for row in rows:
        root = len(batch.input_ids)
        for i, e in enumerate(row):
            shared = shared_len(row[0], e) if i and share else 0
            start = len(batch.input_ids)
            batch.input_ids += e.input_ids[shared:]
            batch.position_ids += range(shared, len(e.input_ids))
            batch.targets += [*e.labels[shared + 1 :], chat.IGNORE]
            batch.segments.append((start, len(batch.input_ids), root, shared))
            batch.tokens += len(e.input_ids)
    return batch


def micro_batches(
    rows: Sequence[Sequence[chat.Encoded]], micro_batch_size: int, share: bool = True
) -> list[Batch]:
    return [
        flatten(rows[i : i + micro_batch_size], share)
        for i in range(0, len(rows), micro_batch_size)
    ]


EMPTY = Batch([0], [0], [chat.IGNORE], [(0, 1, 0, 0)], 0)  # a process's share of an uneven step


def join(batches: Sequence[Batch], budget: int) -> list[Batch]:
    """Consecutive micro batches concatenated while they fit in `budget` tokens: the same
    conversations and so the same step gradient, in fewer and larger attention calls. Only for
    batches without shared prefixes (segments that attend to their own tokens alone)."""
    joined: list[Batch] = []
    for b in batches:
        if joined and len(joined[-1].input_ids) + len(b.input_ids) <= budget:
            last = joined[-1]
            offset = len(last.input_ids)
            last.segments += [(s + offset, e + offset, r + offset, 0) for s, e, r, _ in b.segments]
            last.input_ids += b.input_ids
            last.position_ids += b.position_ids
            last.targets += b.targets
            last.tokens += b.tokens
        else:
            joined.append(
                Batch(
                    list(b.input_ids),
                    list(b.position_ids),
                    list(b.targets),
                    list(b.segments),
                    b.tokens,
                )
            )
    return joined
