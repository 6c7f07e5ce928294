"""Attention over packed conversations, registered with transformers' attention interface so
that the model code is unchanged. Each conversation attends only to itself, causally.

- CPU (`PACKED_ATTENTION`): one SDPA call per conversation, over the prefix it shares with its
  row's first conversation and then itself (`Batch.segments`). A CPU is limited by arithmetic,
  and sharing the system prompt saves a third of it.
- CUDA (`DOCUMENT_ATTENTION`): one `flex_attention` call per layer for the whole micro batch,
  with a block mask (same conversation, causal) built once per micro batch. A GPU is limited by
  kernel launches at these sizes, and the block mask skips the masked-away tiles entirely.
"""

from typing import Any

PACKED_ATTENTION = "meshtune_packed"
DOCUMENT_ATTENTION = "meshtune_document"


def register_packed_attention() -> None:
    """The CPU attention: segments are passed through the model's forward as
    `meshtune_segments`."""
    import torch
    import torch.nn.functional as F
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        parts = []
        for start, end, root, shared in kwargs["meshtune_segments"]:
            k, v = key[:, :, start:end], value[:, :, start:end]
            mask = None
            if shared:
                k = torch.cat([key[:, :, root : root + shared], k], dim=2)
                v = torch.cat([value[:, :, root : root + shared], v], dim=2)
                mask = torch.ones(
                    end - start, shared + end - start, dtype=torch.bool, device=query.device
                ).tril_(diagonal=shared)
            parts.append(
                F.scaled_dot_product_attention(
                    query[:, :, start:end],
                    k,
                    v,
                    attn_mask=mask,
                    dropout_p=dropout,
                    is_causal=not shared,
                    scale=scaling,
                    enable_gqa=True,
                )
            )
        return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None

    AttentionInterface.register(PACKED_ATTENTION, attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, lambda *args, **kwargs: None)


def register_document_attention() -> None:
    """The CUDA attention: the block mask is passed through the model's forward as
    `meshtune_block_mask` (see `document_mask`)."""
    from torch.nn.attention.flex_attention import flex_attention
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        query, key, value = in_autocast_dtype(query, key, value)
        out = flex_attention(
            query,
            key,
            value,
            block_mask=kwargs["meshtune_block_mask"],
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
        )
        return out.transpose(1, 2).contiguous(), None

    AttentionInterface.register(DOCUMENT_ATTENTION, attention)
    AttentionMaskInterface.register(DOCUMENT_ATTENTION, lambda *args, **kwargs: None)


def in_autocast_dtype(*tensors: Any) -> tuple[Any, ...]:
    """The tensors in autocast's dtype while it is on, as SDPA casts its inputs. A full
    fine-tune keeps float32 weights under bf16 autocast, so the rotary embedding leaves query and
    key in float32 beside a bf16 value: older torch releases' flex attention rejects the mix, and
    in float32 its kernels are several times slower."""
    import torch

    device = tensors[0].device.type
    if not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) for t in tensors)


BLOCK = 128  # flex attention's tile: the block mask says which 128 x 128 tiles to compute


def document_mask(documents: Any) -> Any:
    """A flex-attention block mask: query i sees key j when both lie in the same conversation
    (`documents[i] == documents[j]`, one id per token) and j <= i. The ids never decrease along
    the sequence (each conversation is contiguous) and its length is a multiple of `BLOCK`, so
    which tiles to compute follows from each tile's first and last id: no (n x n) token mask
    is built, and nothing waits for the device that holds `documents`."""
    import torch
    from torch.nn.attention.flex_attention import BlockMask

    def same_conversation_causal(b, h, q, kv):
        return (documents[q] == documents[kv]) & (q >= kv)

    n = documents.shape[0]
    tiles = documents.view(n // BLOCK, BLOCK)
    first, last = tiles[:, 0], tiles[:, -1]
    index = torch.arange(n // BLOCK, device=documents.device)
    earlier = index[:, None] > index[None, :]  # [query tile, key tile]: keys all before queries
    # an earlier key tile holds a key of some query's conversation when its last id reaches the
    # query tile's first id; the diagonal tile always holds some (each token sees itself)
    some = (earlier & (last[None, :] >= first[:, None])) | (index[:, None] == index[None, :])
    single = first == last  # the tile lies inside one conversation
    every = earlier & single[:, None] & single[None, :] & (first[:, None] == first[None, :])

    def listed(tiles: Any) -> tuple[Any, Any]:
        """How many key tiles each query tile computes, and which, first in each row."""
        tiles = tiles.to(torch.int32)
        order = tiles.argsort(dim=-1, descending=True, stable=True).to(torch.int32)
        return tiles.sum(dim=-1, dtype=torch.int32)[None, None], order[None, None]

    return BlockMask.from_kv_blocks(
        *listed(some & ~every),  # tiles where the mask is applied
        *listed(every),  # tiles computed without it
        BLOCK_SIZE=BLOCK,
        mask_mod=same_conversation_causal,
        seq_lengths=(n, n),
    )
