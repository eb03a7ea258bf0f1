"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from .spec import Hyperparameters


def build_optimizer(model: Any, hp: Hyperparameters, device: torch.device) -> torch.optim.Optimizer:
    # The usual convention: no weight decay on biases and norm scales (1-D tensors).
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": hp.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    fused = device.type == "cuda"
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=hp.learning_rate, fused=fused)


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
