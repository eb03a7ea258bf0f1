"""Regional compile of the decoder layers: the same loss and gradients as eager, and eager again when
compiling fails. The graphs go through dynamo and AOTAutograd (``aot_eager``); inductor's C++ build
takes about a minute on a loaded CPU, which the trainer spends only on CUDA by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunehouse.trainer.batching import Batch, collate_packed, pad_to_multiple
from tunehouse.trainer.losses import token_sums
from tunehouse.trainer.regional_compile import compile_layers, compile_wanted, decoder_layers
from tunehouse.trainer.tokenization import IGNORE_INDEX, Example

EXAMPLES = [
    Example(list(range(3, 40)), list(range(3, 40))),
    Example(list(range(5, 30)), [IGNORE_INDEX] * 5 + list(range(10, 30))),
]


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Any:
    yield
    torch._dynamo.reset()  # leave no compiled graphs or recompile counts to later tests


def loss_and_grads(model: Any, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss_sum, _, _ = token_sums(model(**batch.model_inputs()).logits, batch.labels)
    loss_sum.backward()
    return loss_sum.detach(), [p.grad.clone() for p in model.parameters()]


def test_compiled_layers_give_the_eager_loss_and_gradients(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    batch = collate_packed(EXAMPLES, 128, 0)
    eager_loss, eager_grads = loss_and_grads(model, batch)
    layers = decoder_layers(model)
    assert len(layers) == model.config.num_hidden_layers

    assert compile_layers(model, layers, lambda: loss_and_grads(model, batch), backend="aot_eager") is None
    assert all("forward" in layer.__dict__ for layer in layers)  # compiled in place, per layer
    bucketed = pad_to_multiple(batch, 128, 0)  # the length the trainer feeds compiled layers
    assert bucketed.input_ids.shape == (batch.input_ids.size(0), 128)
    for b in (batch, bucketed):
        loss, grads = loss_and_grads(model, b)
        torch.testing.assert_close(loss, eager_loss)
        for got, want in zip(grads, eager_grads, strict=True):
            torch.testing.assert_close(got, want)


def test_a_failing_compile_falls_back_to_eager(tiny_model: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    batch = collate_packed(EXAMPLES, 128, 0)
    eager_loss, _ = loss_and_grads(model, batch)

    def broken(graph: Any, inputs: Any) -> Any:
        raise RuntimeError("no compiler here")

    layers = decoder_layers(model)
    error = compile_layers(model, layers, lambda: loss_and_grads(model, batch), backend=broken)
    assert error is not None and "no compiler here" in error
    assert not any("forward" in layer.__dict__ for layer in layers)
    torch.testing.assert_close(loss_and_grads(model, batch)[0], eager_loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("env", "device", "expected"),
    [("", "cuda", True), ("", "cpu", False), ("1", "cpu", True), ("0", "cuda", False)],
)
def test_compile_is_on_by_default_only_on_cuda(
    monkeypatch: pytest.MonkeyPatch, env: str, device: str, expected: bool
) -> None:
    monkeypatch.setenv("TUNEHOUSE_COMPILE", env)
    assert compile_wanted(device)[0] is expected
