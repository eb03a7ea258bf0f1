"""Losses from the labelled hidden states through linear_ce equal the full-logits losses, and their
gradients; models whose logits are more than the plain head keep the full-logits path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from tests.families import build_family_model
from tunehouse.trainer.forward import Forward, plain_head
from tunehouse.trainer.tokenization import IGNORE_INDEX, Example, Pair

CPU = torch.device("cpu")
EXAMPLES = [
    Example(list(range(3, 40)), [IGNORE_INDEX] * 10 + list(range(13, 40))),
    Example(list(range(5, 30)), [IGNORE_INDEX] * 5 + list(range(10, 30))),
    Example(list(range(7, 20)), list(range(7, 20))),
]


def forwards(packing: bool) -> tuple[Forward, Forward]:
    """(full logits, linear head), otherwise the same."""
    return Forward(CPU, False, packing, False, 0, 128), Forward(
        CPU, False, packing, False, 0, 128, linear_head=True
    )


def grads(model: Any) -> list[torch.Tensor]:
    out = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad(set_to_none=True)
    return out


def assert_same(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.fixture
def model(tiny_model: Path, request: pytest.FixtureRequest) -> Any:
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    if getattr(request, "param", "full") == "lora":
        return get_peft_model(base, LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0))
    return base


@pytest.mark.parametrize(("model", "packing"), [("full", True), ("lora", False)], indirect=["model"])
def test_sft_loss_counts_and_gradients_equal_the_full_logits_path(model: Any, packing: bool) -> None:
    assert plain_head(model, CPU)
    full, linear = forwards(packing)
    results = []
    for forward in (full, linear):
        loss, n, correct = forward.token_sums(model, forward.batch(EXAMPLES))
        loss.backward()
        results.append((loss.detach(), int(n), int(correct), grads(model)))
    (loss_f, n_f, ok_f, g_f), (loss_l, n_l, ok_l, g_l) = results
    torch.testing.assert_close(loss_l, loss_f)
    assert (n_l, ok_l) == (n_f, ok_f) and n_f == sum(e.targets for e in EXAMPLES)
    assert_same(g_l, g_f)


@pytest.mark.parametrize("model", ["full"], indirect=True)
def test_dpo_log_probs_and_gradients_equal_the_full_logits_path(model: Any) -> None:
    pairs = [Pair(EXAMPLES[0], EXAMPLES[1]), Pair(EXAMPLES[2], EXAMPLES[0])]
    results = []
    for forward in forwards(False):
        chosen, rejected, _, n, correct = forward.pair_logps(model, pairs)
        (chosen.sum() - 0.5 * rejected.sum()).backward()
        results.append((chosen.detach(), rejected.detach(), int(n), int(correct), grads(model)))
    (c_f, r_f, n_f, ok_f, g_f), (c_l, r_l, n_l, ok_l, g_l) = results
    torch.testing.assert_close(c_l, c_f)
    torch.testing.assert_close(r_l, r_f)
    assert (n_l, ok_l) == (n_f, ok_f)
    assert_same(g_l, g_f)


def test_soft_capped_logits_keep_the_full_logits_path(tmp_path: Path) -> None:
    gemma2 = AutoModelForCausalLM.from_pretrained(build_family_model("gemma2", tmp_path / "gemma2"))
    assert gemma2.config.final_logit_softcapping  # the head's output is capped before the loss
    assert not plain_head(gemma2, CPU)
