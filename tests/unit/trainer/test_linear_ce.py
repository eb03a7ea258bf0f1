"""The chunked linear cross-entropy equals cross-entropy over the full logits, without building them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.distributed._tools.mem_tracker import MemTracker

from tunehouse.trainer.linear_ce import IGNORE_INDEX, linear_cross_entropy, linear_sequence_logps

B, L, H, V = 3, 17, 32, 101


def inputs(dtype: torch.dtype = torch.float32, bias: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, L, H, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g) * 0.2).to(dtype).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.1).to(dtype).requires_grad_() if bias else None
    labels = torch.randint(0, V, (B, L), generator=g)
    labels[0, :5] = IGNORE_INDEX  # a prompt
    labels[2, -4:] = IGNORE_INDEX  # padding
    return hidden, weight, b, labels


def reference(hidden, weight, bias, labels, reduction: str = "sum"):
    logits = (hidden @ weight.T if bias is None else hidden @ weight.T + bias).float()
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, weight.shape[0]),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction=reduction,
    )


def grads(loss: torch.Tensor, *tensors: torch.Tensor | None) -> list[torch.Tensor]:
    present = [t for t in tensors if t is not None]
    return list(torch.autograd.grad(loss, present))


@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_gradients_equal_full_logits_cross_entropy(bias: bool) -> None:
    hidden, weight, b, labels = inputs(bias=bias)
    loss, count, _ = linear_cross_entropy(hidden, weight, labels, b, chunk_rows=7)
    ref = reference(hidden, weight, b, labels)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    assert int(count) == int((labels[:, 1:] != IGNORE_INDEX).sum())
    for got, want in zip(grads(loss, hidden, weight, b), grads(ref, hidden, weight, b), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_ignored_positions_get_no_loss_and_no_gradient() -> None:
    hidden, weight, _, labels = inputs()
    loss, count, _ = linear_cross_entropy(hidden, weight, labels, chunk_rows=5)
    (grad_h,) = grads(loss, hidden)
    # Position t predicts label t + 1: row 0's first four positions predict prompt tokens, and the
    # last position of every row predicts nothing.
    assert torch.all(grad_h[0, :4] == 0) and torch.all(grad_h[:, -1] == 0)
    assert torch.all(grad_h[2, -5:] == 0) and torch.any(grad_h[0, 4] != 0)
    assert int(count) == B * (L - 1) - 4 - 4


def test_tied_head_gradient_sums_the_embedding_and_head_paths() -> None:
    g = torch.Generator().manual_seed(1)
    embedding = (torch.randn(V, H, generator=g) * 0.2).requires_grad_()
    mix = torch.randn(H, H, generator=g) * 0.3
    ids = torch.randint(0, V, (B, L), generator=g)
    labels = ids.clone()
    labels[1, :3] = IGNORE_INDEX

    def hidden_states() -> torch.Tensor:  # a stand-in decoder: embedding lookup and a nonlinearity
        return torch.tanh(F.embedding(ids, embedding) @ mix)

    loss, _, _ = linear_cross_entropy(hidden_states(), embedding, labels, chunk_rows=9)
    (got,) = grads(loss, embedding)
    ref = reference(hidden_states(), embedding, None, labels)
    (want,) = grads(ref, embedding)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_correct_count_equals_the_full_vocabulary_argmax() -> None:
    hidden, weight, _, labels = inputs(seed=3)
    # Make about half the targets the argmax, so the count is neither 0 nor all.
    with torch.no_grad():
        best = (hidden @ weight.T).argmax(-1)
    # Position t predicts label t + 1, so label t + 1 = best[t] is a hit.
    coin = torch.rand(B, L, generator=torch.Generator().manual_seed(4)) < 0.5
    labels = torch.where(coin, labels, best.roll(1, 1))
    labels[0, :5] = IGNORE_INDEX
    _, _, correct = linear_cross_entropy(hidden, weight, labels, chunk_rows=4)
    targets = labels[:, 1:]
    want = ((best[:, :-1] == targets) & (targets != IGNORE_INDEX)).sum()
    assert 0 < int(want) < int((targets != IGNORE_INDEX).sum())
    assert int(correct) == int(want)


def test_bf16_matches_the_reference_within_bf16_rounding() -> None:
    hidden, weight, _, labels = inputs(dtype=torch.bfloat16)
    loss, _, _ = linear_cross_entropy(hidden, weight, labels, chunk_rows=8)
    ref = reference(hidden, weight, None, labels)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=2e-3, atol=0.0)
    for got, want in zip(grads(loss, hidden, weight), grads(ref, hidden, weight), strict=True):
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)


def test_under_bf16_autocast_fp32_master_weights_get_fp32_gradients_close_to_the_reference() -> None:
    hidden, weight, _, labels = inputs()  # fp32, as full fine-tuning keeps them under autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = linear_cross_entropy(hidden, weight, labels, chunk_rows=8)
        ref = reference(hidden, weight, None, labels)
    torch.testing.assert_close(loss, ref, rtol=2e-3, atol=0.0)
    for got, want in zip(grads(loss, hidden, weight), grads(ref, hidden, weight), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("bias", [False, True])
def test_sequence_logps_and_gradients_equal_the_reference(bias: bool) -> None:
    hidden, weight, b, labels = inputs(bias=bias, seed=5)
    got = linear_sequence_logps(hidden, weight, labels, b, chunk_rows=6)
    want = -reference(hidden, weight, b, labels, reduction="none").view(B, L - 1).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # A DPO-like objective weighs each sequence differently, so per-row gradients must be right.
    coeffs = torch.tensor([0.7, -1.3, 0.25])
    for g_got, g_want in zip(
        grads((got * coeffs).sum(), hidden, weight, b),
        grads((want * coeffs).sum(), hidden, weight, b),
        strict=True,
    ):
        torch.testing.assert_close(g_got, g_want, rtol=1e-5, atol=1e-5)


def test_no_targets_give_zero_loss_that_still_backpropagates() -> None:
    hidden, weight, _, labels = inputs()
    labels[:] = IGNORE_INDEX
    loss, count, correct = linear_cross_entropy(hidden, weight, labels)
    loss.backward()
    assert float(loss.detach()) == 0.0 and int(count) == 0 and int(correct) == 0
    assert torch.all(weight.grad == 0)


def peak_bytes(work, *inputs: torch.Tensor) -> int:
    """Peak bytes of tensors ``work`` allocates (torch's own tracker), over what ``inputs`` already hold."""
    tracker = MemTracker()
    tracker.track_external(*inputs)  # else the first view of an input would count its whole storage
    cpu = torch.device("cpu")
    with tracker:
        before = tracker.get_tracker_snapshot().get(cpu, {}).get("Total", 0)
        work()
    return tracker.get_tracker_snapshot("peak")[cpu]["Total"] - before


def test_chunked_peak_memory_is_a_fraction_of_the_full_logits_at_a_large_vocabulary() -> None:
    vocab, tokens, hidden_size = 50_000, 512, 64
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, tokens, hidden_size, generator=g).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.05).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), generator=g)

    def full() -> None:
        logits = (hidden @ weight.T).float()[:, :-1]
        F.cross_entropy(logits.reshape(-1, vocab), labels[:, 1:].reshape(-1), reduction="sum").backward()

    def chunked() -> None:
        linear_cross_entropy(hidden, weight, labels, chunk_rows=32)[0].backward()

    logits_bytes = tokens * vocab * 4
    full_peak, chunked_peak = peak_bytes(full, hidden, weight), peak_bytes(chunked, hidden, weight)
    assert full_peak > 2 * logits_bytes  # the reference holds the logits and their gradient at once
    # What remains: the weight's gradient (as large as the weight) and a couple of 32-row chunks.
    assert chunked_peak < 2 * vocab * hidden_size * 4 + 4 * 32 * vocab * 4
    assert chunked_peak < full_peak / 4


def test_no_grad_pass_keeps_no_gradient_buffers() -> None:
    vocab, tokens, hidden_size, chunk = 20_000, 256, 64, 16
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, tokens, hidden_size, generator=g).requires_grad_()
    weight = (torch.randn(vocab, hidden_size, generator=g) * 0.05).requires_grad_()
    labels = torch.randint(0, vocab, (1, tokens), generator=g)
    losses = []
    with torch.no_grad():
        peak = peak_bytes(
            lambda: losses.append(linear_cross_entropy(hidden, weight, labels, chunk_rows=chunk)[0]),
            hidden,
            weight,
        )
        torch.testing.assert_close(losses[0], reference(hidden, weight, None, labels), rtol=1e-5, atol=1e-3)
    assert peak < 4 * chunk * vocab * 4  # a few chunks of logits, no weight-sized gradient buffer
    assert peak < vocab * hidden_size * 4
