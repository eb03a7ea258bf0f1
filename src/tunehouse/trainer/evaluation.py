"""Evaluation passes: the held-out and validation examples, no gradients, summed over examples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .memory import NoGradRetry

if TYPE_CHECKING:
    from .objectives import Objective


@dataclass
class EvalSums:
    """What one pass adds up; every metric is a ratio of these, so the micro-batch size cannot change it."""

    loss_sum: float = 0.0
    units: int = 0  # what the loss is averaged over: target tokens (sft) or pairs (dpo)
    tokens: int = 0  # target tokens scored for accuracy
    correct: int = 0
    values: dict[str, list[float]] = field(default_factory=dict)  # per-example values an objective keeps


class Evaluator:
    def __init__(self, objective: Objective, items: list[Any], no_grad: NoGradRetry) -> None:
        self.objective = objective
        self.items = items
        self.no_grad = no_grad

    def evaluate(self, model: Any, train_micro: int) -> dict[str, float]:
        return self.no_grad.run("evaluation", lambda micro: self.evaluation_pass(model, micro), train_micro)

    @torch.no_grad()
    def evaluation_pass(self, model: Any, micro: int) -> dict[str, float]:
        model.eval()
        sums = EvalSums()
        for start in range(0, len(self.items), micro):
            chunk = self.items[start : start + micro]
            self.objective.eval_chunk(model, chunk, list(range(start, start + len(chunk))), sums)
        model.train()
        return self.objective.eval_metrics(sums)
