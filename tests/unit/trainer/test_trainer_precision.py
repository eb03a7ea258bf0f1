"""The precision scheme (which dtype, which optimizer state) and the CUDA memory planner's arithmetic."""

from __future__ import annotations

import pytest
import torch

from tunehouse.contract.hyperparameters import Hyperparameters
from tunehouse.trainer.optim import build_optimizer
from tunehouse.trainer.planner import ModelShape, plan_for, plan_memory, token_bytes
from tunehouse.trainer.precision import Bf16AdamW, Precision, choose_precision

GIB = 2**30


@pytest.mark.parametrize(
    ("device", "bf16", "method", "expected"),
    [
        ("cpu", False, "full", Precision(torch.float32, False, 16)),
        ("cpu", False, "lora", Precision(torch.float32, False, 16)),
        ("cuda", False, "full", Precision(torch.float32, False, 16)),  # no bf16 on the GPU
        ("cuda", True, "lora", Precision(torch.bfloat16, True, 16)),  # bf16 base, fp32 adapter
        ("cuda", True, "full", Precision(torch.bfloat16, True, 12)),  # bf16 weights, fp32 moments
    ],
)
def test_precision_follows_device_and_method(
    device: str, bf16: bool, method: str, expected: Precision
) -> None:
    assert choose_precision(device, bf16, method) == expected


def _adam_steps(optimizer: torch.optim.Optimizer, param: torch.Tensor, steps: int) -> None:
    for i in range(steps):
        param.grad = torch.full_like(param, 1.0 + 0.1 * i)
        optimizer.step()


def test_bf16_adamw_on_fp32_weights_is_torch_adamw() -> None:
    torch.manual_seed(0)
    start = torch.randn(64)
    ours, reference = start.clone().requires_grad_(), start.clone().requires_grad_()
    _adam_steps(Bf16AdamW([ours], lr=1e-2, weight_decay=0.1), ours, 5)
    _adam_steps(torch.optim.AdamW([reference], lr=1e-2, weight_decay=0.1, foreach=False), reference, 5)
    torch.testing.assert_close(ours, reference)


def test_fp32_weights_on_cpu_get_torch_adamw_fused_with_the_same_updates() -> None:
    torch.manual_seed(0)
    model, reference = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    reference.load_state_dict(model.state_dict())
    hp = Hyperparameters(learning_rate=1e-2, weight_decay=0.1)
    optimizer = build_optimizer(model, hp, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW) and optimizer.defaults["fused"]
    plain = torch.optim.AdamW(
        [
            {"params": [reference.weight], "weight_decay": 0.1},
            {"params": [reference.bias], "weight_decay": 0.0},  # no decay on 1-D tensors
        ],
        lr=1e-2,
        foreach=False,
    )
    for step in range(3):
        for net, opt in ((model, optimizer), (reference, plain)):
            net(torch.full((2, 8), 1.0 + step)).square().sum().backward()
            opt.step()
            opt.zero_grad()
    torch.testing.assert_close(model.state_dict(), reference.state_dict())


def test_updates_below_bf16_resolution_survive_through_stochastic_rounding() -> None:
    # At 1.0 a bf16 step is 2**-7; an Adam update of 1e-3 is under half of it, so rounding to
    # nearest would never move the weight. Stochastic rounding moves it by the right amount on average.
    torch.manual_seed(0)
    weight = torch.ones(4096, dtype=torch.bfloat16, requires_grad=True)
    reference = torch.ones(4096, requires_grad=True)
    _adam_steps(Bf16AdamW([weight], lr=1e-3, weight_decay=0.0), weight, 20)
    _adam_steps(torch.optim.AdamW([reference], lr=1e-3, weight_decay=0.0), reference, 20)
    moved = 1 - reference.detach().mean().item()
    assert moved == pytest.approx(0.02, rel=0.05)
    assert weight.detach().float().mean().item() == pytest.approx(1 - moved, abs=1e-3)


def test_bf16_adamw_keeps_fp32_moments_across_a_state_dict_round_trip() -> None:
    weight = torch.ones(8, dtype=torch.bfloat16, requires_grad=True)
    optimizer = Bf16AdamW([weight], lr=1e-3)
    _adam_steps(optimizer, weight, 2)
    saved = optimizer.state_dict()
    restored = Bf16AdamW([weight], lr=1e-3)
    restored.load_state_dict(saved)
    state = restored.state[weight]
    assert state["exp_avg"].dtype == state["exp_avg_sq"].dtype == torch.float32
    torch.testing.assert_close(state["exp_avg"], saved["state"][0]["exp_avg"], rtol=0, atol=0)
    assert state["step"] == 2


# A Qwen2.5-0.5B-like shape, fully trained in bf16 (2 bytes loaded, 12 bytes of state in all).
SHAPE = ModelShape(
    layers=24, hidden=896, intermediate=4864, vocab=151936, trainable=494_000_000, loaded_bytes=988_000_000
)


def test_token_bytes_counts_layers_and_logits() -> None:
    layer = (6 * 896 + 4 * 4864) * 2
    logits = 151936 * 10
    assert token_bytes(SHAPE, checkpointing=False) == 24 * layer + logits
    assert token_bytes(SHAPE, checkpointing=True) == 24 * 896 * 2 + layer + logits


def test_plan_fits_the_micro_batch_into_free_memory() -> None:
    state = SHAPE.trainable * 12 - SHAPE.loaded_bytes
    per_token = token_bytes(SHAPE, checkpointing=False)
    free = int((state + 10 * 1024 * per_token) / 0.9) + 1  # room for exactly 10 sequences of 1024
    plan = plan_memory(SHAPE, free, 12, max_seq_len=1024, micro=4, per_step=64, checkpointing=False)
    assert (plan.micro, plan.checkpointing, plan.token_budget) == (10, False, 10 * 1024)
    assert "micro-batch 10 of up to 1024 tokens (was 4)" in plan.line
    capped = plan_memory(SHAPE, free, 12, max_seq_len=1024, micro=4, per_step=8, checkpointing=False)
    assert capped.micro == 8  # never more than the step's examples


def test_plan_turns_checkpointing_on_when_one_sequence_does_not_fit_without() -> None:
    state = SHAPE.trainable * 12 - SHAPE.loaded_bytes
    free = int((state + 4096 * token_bytes(SHAPE, checkpointing=True)) / 0.9) + 1
    plan = plan_memory(SHAPE, free, 12, max_seq_len=4096, micro=2, per_step=2, checkpointing=False)
    assert plan.checkpointing and plan.micro == 1
    hopeless = plan_memory(SHAPE, 8 * GIB, 12, max_seq_len=4096, micro=2, per_step=2, checkpointing=False)
    assert hopeless.micro == 1 and "may not fit" in hopeless.line


def test_nothing_is_planned_on_cpu() -> None:
    plan = plan_for(None, torch.device("cpu"), 16, 512, micro=4, per_step=8, checkpointing=False)
    assert (plan.micro, plan.checkpointing, plan.token_budget) == (4, False, 0)
    assert plan.line == "memory plan: not needed on cpu, micro-batch 4 as configured"
