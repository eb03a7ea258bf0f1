"""Cross-entropy through the LM head without materialising the full logits.

The loss only needs the hidden states at labelled positions, so those are gathered first (prompt
and padding positions never reach the head). The head is then applied a chunk of rows at a time:
each chunk's logits live only while its loss, its argmax and its gradients are computed, so peak
memory is one chunk of ``rows x vocab`` instead of ``tokens x vocab`` (for a 152k vocabulary at 16k
tokens: ~150 MB instead of ~10 GB per fp32 copy).

On CUDA, Liger's fused kernel does the summed loss when liger-kernel is installed; the chunked
autograd functions here are the CPU path and the fallback. Both return tensors, so the caller
decides when to read them on the host.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE_INDEX = -100
# Elements of one chunk's fp32 logits (64 MiB; the softmax gradient reuses them in place), and a floor
# on its rows: each chunk also reads and writes the whole head-weight gradient, so chunks of fewer
# rows than ~256 cost more in memory traffic than in arithmetic (measured ~30% slower on CPU at 128).
CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_ROWS = 256

try:  # optional: pip install liger-kernel (CUDA + Triton only)
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss as _LigerFLCE
except ImportError:  # pragma: no cover - depends on the machine
    _LigerFLCE = None


def next_token_rows(
    hidden: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden states that predict a labelled token (N, H), those tokens (N,), the row of each (N,)).

    ``hidden`` is (B, L, H) and ``labels`` (B, L), unshifted: position t predicts label t + 1."""
    targets = labels[:, 1:]
    rows, cols = (targets != ignore_index).nonzero(as_tuple=True)
    return hidden[rows, cols], targets[rows, cols], rows


def _chunk_rows(n: int, vocab: int, chunk_rows: int | None) -> int:
    return max(1, min(n, chunk_rows or max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // vocab)))


def _chunk_logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # The matmul runs in the weights' dtype (as the model's own head would); softmax statistics in fp32.
    logits = h @ weight.T if bias is None else torch.addmm(bias, h, weight.T)
    return logits.float()


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of ``h @ weight.T + bias`` against ``targets``, and the argmax hit count.

    The gradients are computed in the forward pass, chunk by chunk, while each chunk's logits exist
    (the loss is a plain sum, so its gradient is known up to the incoming scalar); backward only
    scales them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_rows: int,
        grad_enabled: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # needs_input_grad ignores torch.no_grad() around the call; an evaluation pass must not pay for
        # gradients (nor hold a weight-sized buffer).
        want_h, want_w, want_b = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        correct = torch.zeros((), dtype=torch.long, device=h.device)
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if want_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if want_b else None
        for start in range(0, h.shape[0], chunk_rows):
            hc, tc = h[start : start + chunk_rows], targets[start : start + chunk_rows]
            logits = _chunk_logits(hc, weight, bias)
            picked = logits.gather(1, tc[:, None]).squeeze(1)
            correct += (logits.argmax(-1) == tc).sum()
            # The softmax in place over the chunk's logits, its log-normaliser on the way: no
            # chunk-sized temporary, as logsumexp followed by a second exp would make.
            top = logits.amax(-1, keepdim=True)
            total = logits.sub_(top).exp_().sum(-1, keepdim=True)
            lse = (top + total.log()).squeeze(1)
            loss += (lse - picked).sum()
            if not (want_h or want_w or want_b):
                continue
            # d(lse - picked)/d logits = softmax - onehot.
            grad = logits.div_(total)
            grad[torch.arange(len(tc), device=h.device), tc] -= 1
            if grad_b is not None:
                grad_b += grad.sum(0)
            grad = grad.to(h.dtype)
            if grad_h is not None:
                grad_h[start : start + chunk_rows] = grad @ weight
            if grad_w is not None:
                grad_w.addmm_(grad.T.float(), hc.float())
        ctx.mark_non_differentiable(correct)
        ctx.save_for_backward(
            *(g if g is not None else torch.empty(0) for g in (grad_h, grad_w, grad_b)),
        )
        ctx.has = (want_h, want_w, want_b)
        ctx.dtypes = (h.dtype, weight.dtype, bias.dtype if bias is not None else None)
        return loss, correct

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, _grad_correct: Any) -> tuple[Any, ...]:
        saved = ctx.saved_tensors
        out = []
        for has, g, dtype in zip(ctx.has, saved, ctx.dtypes, strict=True):
            out.append((g * grad_loss).to(dtype) if has else None)
        return out[0], out[1], out[2], None, None, None


class _LinearLogProbs(torch.autograd.Function):
    """Per-row log-probability of ``targets`` under ``h @ weight.T + bias``.

    The incoming gradient differs per row, so backward recomputes each chunk's logits from the
    saved hidden states and log-normalisers instead of keeping them."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        h: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        targets: torch.Tensor,
        chunk_rows: int,
    ) -> torch.Tensor:
        logps = torch.empty(h.shape[0], dtype=torch.float32, device=h.device)
        lses = torch.empty_like(logps)
        for start in range(0, h.shape[0], chunk_rows):
            hc, tc = h[start : start + chunk_rows], targets[start : start + chunk_rows]
            logits = _chunk_logits(hc, weight, bias)
            lses[start : start + chunk_rows] = torch.logsumexp(logits, dim=-1)
            logps[start : start + chunk_rows] = logits.gather(1, tc[:, None]).squeeze(1)
        logps -= lses
        ctx.save_for_backward(h, weight, bias if bias is not None else torch.empty(0), targets, lses)
        ctx.has_bias = bias is not None
        ctx.chunk_rows = chunk_rows
        return logps

    @staticmethod
    def backward(ctx: Any, grad_logps: torch.Tensor) -> tuple[Any, ...]:
        h, weight, bias, targets, lses = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        want_h, want_w, want_b = ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        grad_h = torch.empty_like(h) if want_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=h.device) if want_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=h.device) if want_b else None
        step = ctx.chunk_rows
        for start in range(0, h.shape[0], step):
            hc, tc = h[start : start + step], targets[start : start + step]
            gc = grad_logps[start : start + step].float()
            logits = _chunk_logits(hc, weight, bias)
            # d logp / d logits = onehot - softmax, times each row's incoming gradient.
            grad = logits.sub_(lses[start : start + step, None]).exp_().mul_(-gc[:, None])
            grad[torch.arange(len(tc), device=h.device), tc] += gc
            if grad_b is not None:
                grad_b += grad.sum(0)
            grad = grad.to(h.dtype)
            if grad_h is not None:
                grad_h[start : start + step] = grad @ weight
            if grad_w is not None:
                grad_w.addmm_(grad.T.float(), hc.float())
        return (
            grad_h,
            grad_w.to(weight.dtype) if grad_w is not None else None,
            grad_b.to(bias.dtype) if grad_b is not None and bias is not None else None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
    use_liger: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy, labelled target count, argmax-correct count), as tensors.

    ``hidden`` (B, L, H) is the decoder's output before the head ``weight`` (V, H) (+ ``bias``);
    ``labels`` (B, L) unshifted, ``ignore_index`` where nothing is learned. Equal to
    ``F.cross_entropy((hidden @ weight.T)[:, :-1], labels[:, 1:], reduction="sum")`` and its gradients."""
    h, targets, _ = next_token_rows(hidden, labels, ignore_index)
    count = torch.tensor(targets.numel(), device=hidden.device)
    if h.shape[0] == 0:
        # Keeps the graph connected, so a step whose micro-batch has no targets still backpropagates.
        zero = (hidden.sum() * 0.0).float() + (weight.sum() * 0.0).float()
        return zero, count, torch.zeros((), dtype=torch.long, device=hidden.device)
    rows = _chunk_rows(h.shape[0], weight.shape[0], chunk_rows)
    if use_liger and _LigerFLCE is not None and h.is_cuda:
        out = _LigerFLCE(ignore_index=ignore_index, reduction="sum")(weight, h, targets, bias)
        # Newer Liger releases can return (loss, z_loss) or an output object instead of the bare loss.
        loss = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)
        # Liger returns no argmax; counting hits costs one more no-grad pass over the head.
        correct = token_correct(h.detach(), weight.detach(), targets, bias, chunk_rows=rows)
        return loss.float(), count, correct
    loss, correct = _LinearCrossEntropy.apply(h, weight, bias, targets, rows, torch.is_grad_enabled())
    return loss, count, correct


@torch.no_grad()
def token_correct(
    h: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """How many rows of ``h`` put their highest logit on their target (argmax a chunk of rows at a time)."""
    rows = _chunk_rows(h.shape[0], weight.shape[0], chunk_rows)
    correct = torch.zeros((), dtype=torch.long, device=h.device)
    for start in range(0, h.shape[0], rows):
        logits = _chunk_logits(h[start : start + rows], weight, bias)
        correct += (logits.argmax(-1) == targets[start : start + rows]).sum()
    return correct


def linear_sequence_logps(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = IGNORE_INDEX,
    chunk_rows: int | None = None,
) -> torch.Tensor:
    """Per sequence (B,): the summed log-probability of its labelled next tokens, as DPO needs it.

    Equal to ``-F.cross_entropy(logits[:, :-1], labels[:, 1:], reduction="none").sum(-1)`` for
    ``logits = hidden @ weight.T``, and differentiable in ``hidden``, ``weight`` and ``bias``."""
    h, targets, rows = next_token_rows(hidden, labels, ignore_index)
    out = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    if h.shape[0] == 0:
        return out + (hidden.sum() * 0.0).float() + (weight.sum() * 0.0).float()
    size = _chunk_rows(h.shape[0], weight.shape[0], chunk_rows)
    logps = _LinearLogProbs.apply(h, weight, bias, targets, size)
    return out.index_add(0, rows, logps)
