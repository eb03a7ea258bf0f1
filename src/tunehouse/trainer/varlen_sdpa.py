"""Varlen attention without flash-attn: each packed example attends to itself only, with no mask.

Registered with transformers as ``tunehouse_varlen_sdpa``, with flash attention's mask function (no
mask is built for a packed row; a padded batch passes its 2-D padding mask through), so the trainer
lays a packed micro-batch out as one row with ``cu_seq_lens`` exactly as it does for flash (see
batching.py). The attention then runs per example:

- on CUDA in half precision, ``torch.nn.attention.varlen.varlen_attn`` over the whole row when this
  torch has it (one kernel, no host sync);
- otherwise SDPA once per example with ``is_causal`` (its flash kernel on CPU skips the masked half),
  which costs the sum of the examples' squared lengths instead of the row's squared length that a
  block-diagonal mask costs: for 8 chat examples of ~300 tokens in a 2,400-token row, an eighth.

A padded batch (evaluation, DPO) runs each row on its unpadded prefix; padding on the left or a
sliding window falls back to an explicit mask for that row only.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

NAME = "tunehouse_varlen_sdpa"

try:  # torch >= 2.10, CUDA only
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - depends on the torch build
    _varlen_attn = None


def _varlen_options() -> tuple[dict[str, Any] | None, bool]:
    """(the keyword arguments that make this torch's varlen_attn causal, whether it takes enable_gqa):
    releases differ (``is_causal=True`` in the first, ``window_size=(-1, 0)`` later)."""
    if _varlen_attn is None:
        return None, False
    params = inspect.signature(_varlen_attn).parameters
    gqa = "enable_gqa" in params
    if "is_causal" in params:
        return {"is_causal": True}, gqa
    if "window_size" in params:
        return {"window_size": (-1, 0)}, gqa
    return None, False


_VARLEN_CAUSAL, _VARLEN_GQA = _varlen_options()


def _expand_kv(t: torch.Tensor, groups: int) -> torch.Tensor:
    # (B, Hkv, T, D) -> (B, Hkv * groups, T, D): the query heads each key/value head serves.
    return t if groups == 1 else t.repeat_interleave(groups, dim=1)


def _segment(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout: float,
    scale: float | None,
    window: int | None,
) -> torch.Tensor:
    """Causal attention of one example (B, H, n, D), optionally within a sliding window; the key and
    value heads are shared by groups of query heads without being copied (SDPA's enable_gqa)."""
    n = q.shape[2]
    gqa = q.shape[1] != k.shape[1]
    if window is None or n <= window:
        return F.scaled_dot_product_attention(
            q, k, v, dropout_p=dropout, is_causal=True, scale=scale, enable_gqa=gqa
        )
    i = torch.arange(n, device=q.device)
    allowed = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scale, enable_gqa=gqa
    )


def _bounds(cu_seq_lens: torch.Tensor | None, length: int) -> list[int]:
    if cu_seq_lens is None:
        return [0, length]
    bounds = [int(b) for b in cu_seq_lens.tolist()]
    return bounds if bounds[-1] == length else [*bounds, length]


def _is_prefix(mask: torch.Tensor, n: int) -> bool:
    return bool(mask[:n].all()) and not bool(mask[n:].any())


def varlen_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: (B, H, T, D) queries, (B, Hkv, T, D) keys and values in;
    (B, T, H, D) out. ``attention_mask`` is None or the (B, T) padding mask; ``cu_seq_lens_q`` (in
    ``kwargs``) marks the examples of a single packed row."""
    if kwargs.get("softcap") is not None or kwargs.get("s_aux") is not None:
        raise ValueError(f"{NAME} supports neither attention softcapping nor attention sinks")
    dropout = dropout if module.training else 0.0
    batch, heads, length, _ = query.shape
    groups = heads // key.shape[1]
    cu_seq_lens = kwargs.get("cu_seq_lens_q")
    if cu_seq_lens is not None and batch != 1:
        raise ValueError(f"{NAME}: cu_seq_lens describe a single packed row, got {batch} rows")

    if (
        _VARLEN_CAUSAL is not None
        and query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and attention_mask is None
        and sliding_window is None
        and dropout == 0.0
    ):
        if cu_seq_lens is None:
            step = torch.arange(batch + 1, device=query.device, dtype=torch.int32)
            cu_seq_lens = step * length
            max_length = length
        else:
            max_length = int(kwargs.get("max_length_q") or length)
        if not _VARLEN_GQA:
            key, value, groups = _expand_kv(key, groups), _expand_kv(value, groups), 1
        # (B, H, T, D) -> (B * T, H, D): the varlen kernel's packed layout.
        q = query.transpose(1, 2).reshape(batch * length, heads, -1)
        k = key.transpose(1, 2).reshape(batch * length, key.shape[1], -1)
        v = value.transpose(1, 2).reshape(batch * length, value.shape[1], -1)
        bounds = cu_seq_lens.to(torch.int32)
        extra = {**_VARLEN_CAUSAL, **({"enable_gqa": True} if groups > 1 else {})}
        out = _varlen_attn(q, k, v, bounds, bounds, max_length, max_length, scale=scaling, **extra)
        return out.reshape(batch, length, heads, -1), None

    # Split, not sliced: a split's backward writes each piece's gradient into one buffer, where slices
    # would each zero-fill and add up a gradient the size of the whole row.
    rows = []
    for b, (q, k, v) in enumerate(zip(query.split(1), key.split(1), value.split(1), strict=True)):
        if attention_mask is not None:
            mask = attention_mask[b].bool()
            n = int(mask.sum())
            if not _is_prefix(mask, n):  # left padding: this row with an explicit mask
                rows.append(_masked_row(q, k, v, mask, dropout, scaling, sliding_window))
                continue
            bounds = [0, n] if n == length else [0, n, length]
        else:
            bounds = _bounds(cu_seq_lens, length)
        sizes = [e - s for s, e in zip(bounds, bounds[1:], strict=False) if e > s]
        parts = [
            _segment(qs, ks, vs, dropout, scaling, sliding_window).transpose(1, 2)
            for qs, ks, vs in zip(q.split(sizes, 2), k.split(sizes, 2), v.split(sizes, 2), strict=True)
        ]
        # (1, n, H, D) pieces joined along the sequence: one copy into the (B, T, H, D) layout out.
        rows.append(parts[0].contiguous() if len(parts) == 1 else torch.cat(parts, dim=1))
    return (rows[0] if batch == 1 else torch.cat(rows, dim=0)), None


def _masked_row(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    dropout: float,
    scale: float | None,
    window: int | None,
) -> torch.Tensor:
    """One row whose padding is not all at the end, under an explicit mask; (1, T, H, D)."""
    i = torch.arange(q.shape[2], device=q.device)
    allowed = (i[None, :] <= i[:, None]) & mask[None, :]
    if window is not None:
        allowed &= i[:, None] - i[None, :] < window
    out = F.scaled_dot_product_attention(
        q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.nan_to_num(0.0).transpose(1, 2).contiguous()  # fully masked pad queries give NaN


def register() -> None:
    """Make ``attn_implementation=NAME`` loadable (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    AttentionInterface.register(NAME, varlen_sdpa_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
