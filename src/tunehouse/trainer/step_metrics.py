"""Step metrics read from the device once per logging interval, not once per step.

A step leaves its sums (loss, gradient norm, target and correct counts, objective extras) on the
device; ``Pending`` keeps them with what the host knows anyway (step number, learning rate, units),
and ``read`` copies them all back in one transfer when the loop needs numbers: to log metrics,
evaluate, checkpoint, stop or save. That is also where a non-finite loss or gradient norm fails the
run, naming the first step it happened at, with the diagnosis a per-step check gave.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .objectives import StepResult


class NonFiniteLoss(Exception):
    def __init__(self, what: str, value: float, step: int, learning_rate: float, dtype: torch.dtype) -> None:
        self.step = step
        super().__init__(
            f"{what} became {value} at step {step} (learning_rate={learning_rate:.3g}, "
            f"dtype={str(dtype).removeprefix('torch.')}); lower the learning rate or check the data"
        )


@dataclass(frozen=True)
class StepMetrics:
    step: int
    loss: float
    grad_norm: float
    correct: int
    targets: int
    extra: dict[str, float]


@dataclass(frozen=True)
class _Unread:
    step: int
    learning_rate: float
    units: int
    extra_keys: tuple[str, ...]
    values: torch.Tensor  # float64: loss_sum, grad_norm, correct, targets, *extras


class Pending:
    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype  # the weights' dtype, for the diagnosis
        self._unread: list[_Unread] = []

    def __len__(self) -> int:
        return len(self._unread)

    def add(self, step: int, learning_rate: float, result: StepResult, grad_norm: torch.Tensor) -> None:
        keys = tuple(result.extra)
        parts = [result.loss_sum, grad_norm, result.correct, result.targets, *result.extra.values()]
        device = grad_norm.device
        values = torch.stack([torch.as_tensor(p, device=device).double() for p in parts])
        self._unread.append(_Unread(step, learning_rate, result.units, keys, values))

    def read(self) -> list[StepMetrics]:
        """Every unread step's metrics, oldest first; raises NonFiniteLoss for the first bad value."""
        if not self._unread:
            return []
        unread, self._unread = self._unread, []
        rows = torch.stack([u.values for u in unread]).tolist()  # the one device-to-host sync
        out = []
        for u, (loss_sum, grad_norm, correct, targets, *extra) in zip(unread, rows, strict=True):
            loss = loss_sum / max(1, u.units)
            if not math.isfinite(loss):
                raise NonFiniteLoss("loss", loss, u.step, u.learning_rate, self.dtype)
            if not math.isfinite(grad_norm):
                raise NonFiniteLoss("gradient norm", grad_norm, u.step, u.learning_rate, self.dtype)
            extras = dict(zip(u.extra_keys, extra, strict=True))
            out.append(StepMetrics(u.step, loss, grad_norm, int(correct), int(targets), extras))
        return out
