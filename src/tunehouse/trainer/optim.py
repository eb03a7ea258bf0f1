"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from tunehouse.contract.hyperparameters import Hyperparameters

from .precision import Bf16AdamW, adamw_8bit


def build_optimizer(
    model: Any, hp: Hyperparameters, device: torch.device, log: Callable[[str], None] | None = None
) -> torch.optim.Optimizer:
    """AdamW: bitsandbytes' 8-bit one when asked for and available, ``Bf16AdamW`` (fp32 moments) for
    bf16 trainable weights, else torch's, fused (one kernel over all tensors, on CPU as on CUDA). See
    precision.py for the scheme."""
    # The usual convention: no weight decay on biases and norm scales (1-D tensors).
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": hp.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    eight_bit = adamw_8bit() if device.type == "cuda" else None
    if eight_bit is not None:
        optimizer: torch.optim.Optimizer = eight_bit(groups, lr=hp.learning_rate)
        kind = "8-bit AdamW (bitsandbytes)"
    elif any(p.dtype != torch.float32 for g in groups for p in g["params"]):
        optimizer = Bf16AdamW(groups, lr=hp.learning_rate)
        kind = "AdamW with fp32 moments, bf16 weights updated with stochastic rounding"
    else:
        optimizer = torch.optim.AdamW(groups, lr=hp.learning_rate, fused=device.type in ("cuda", "cpu"))
        kind = "AdamW, fp32, fused" if optimizer.defaults["fused"] else "AdamW, fp32"
    if log is not None:
        log(f"optimizer: {kind}")
    return optimizer


def lr_factor(kind: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        return max(0.0, 1.0 - progress)

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, hp: Hyperparameters, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup_steps = round(total_steps * hp.warmup_ratio)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(hp.lr_scheduler_type, total_steps, warmup_steps)
    )
