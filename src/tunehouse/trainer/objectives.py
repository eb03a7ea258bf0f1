"""One objective per train mode: what a step optimizes, what an evaluation measures, and what the
objective keeps across a resume. The loop calls only the ``Objective`` interface."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from tunehouse.contract.spec import RunSpec

from .checkpoint import REFERENCE_FILE
from .evaluation import EvalSums
from .forward import Forward
from .losses import dpo_loss
from .memory import NoGradRetry
from .tokenization import Example, Pair

T = TypeVar("T")


def chunks(items: list[T], size: int) -> list[list[T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@dataclass
class StepResult:
    """What one step adds up. The sums that depend on the model stay on the device (0-d tensors,
    float64 so they add up as exactly as host floats did) and the loop reads them once per logging
    interval; waiting for them in the step would stall the host behind the device."""

    loss_sum: torch.Tensor | float = 0.0  # summed token loss (sft) or summed pair loss (dpo)
    units: int = 0  # target tokens (sft) or pairs (dpo) the loss is averaged over
    real_tokens: int = 0
    positions: int = 0
    correct: torch.Tensor | int = 0
    targets: torch.Tensor | int = 0
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # per-step means, on the device


class Objective:
    """The interface the loop calls. ``step`` runs forward and backward over one optimizer step's
    items in micro-batches (the loop owns zeroing, clipping and the optimizer)."""

    pairs: ClassVar[bool] = False  # train on preference Pairs rather than Examples
    length_policy: ClassVar[str] = "truncated at the end"  # what happens past max_seq_len, for the log

    def __init__(self, forward: Forward) -> None:
        self.forward = forward

    @classmethod
    def create(cls, spec: RunSpec, forward: Forward) -> Objective:
        return cls(forward)

    def describe(self) -> str:
        """Appended to the loop's "steps: ..." line."""
        return ""

    def start(self, model: Any, splits: dict[str, list[Any]], no_grad: NoGradRetry, micro: int) -> str | None:
        """Prepare a fresh run (not a resume); returns a line for the log, if any."""
        return None

    def resume(self, ckpt: Path) -> None:
        """Restore what ``checkpoint_files`` saved."""

    def checkpoint_files(self) -> dict[str, Any] | None:
        """Extra files (name -> object for torch.save) that a checkpoint of this objective needs."""
        return None

    def prefetch(self, items: list[Any], micro: int) -> None:
        """Start collating the batches a step over ``items`` will run (see prefetch.py)."""
        self.forward.prefetch(chunks(items, micro))

    def step_units(self, items: list[Any]) -> int:
        """What a step's loss is averaged over: on several ranks, the whole step's count, each rank's
        loss divided by it (distributed.py)."""
        return sum(e.targets for e in items)

    def step(
        self, model: Any, items: list[Any], indices: list[int], micro: int, units: int | None = None
    ) -> StepResult:
        """``units``: the loss's denominator when ``items`` are one rank's share of the step."""
        raise NotImplementedError

    def eval_chunk(self, model: Any, chunk: list[Any], indices: list[int], sums: EvalSums) -> None:
        raise NotImplementedError

    def eval_metrics(self, sums: EvalSums) -> dict[str, float]:
        return {
            "eval_loss": sums.loss_sum / max(1, sums.units),
            "eval_token_accuracy": sums.correct / max(1, sums.tokens),
        }


class SftObjective(Objective):
    """Supervised fine-tuning: next-token cross-entropy on the labelled (assistant) tokens, averaged
    over all of the step's target tokens."""

    def step(
        self, model: Any, items: list[Example], indices: list[int], micro: int, units: int | None = None
    ) -> StepResult:
        result = StepResult(units=self.step_units(items) if units is None else units)
        for chunk in chunks(items, micro):
            batch = self.forward.batch(chunk)
            loss_sum, n, correct = self.forward.token_sums(model, batch)
            (loss_sum / max(1, result.units)).backward()
            result.loss_sum += loss_sum.detach().double()
            result.targets += n
            result.correct += correct
            result.real_tokens += batch.real_tokens
            result.positions += batch.positions
        return result

    def eval_chunk(self, model: Any, chunk: list[Example], indices: list[int], sums: EvalSums) -> None:
        batch = self.forward.batch(chunk)
        batch_loss, n, ok = self.forward.token_sums(model, batch)
        sums.loss_sum += float(batch_loss)
        sums.units += int(n)
        sums.tokens += int(n)
        sums.correct += int(ok)


class PretrainObjective(SftObjective):
    """Continued pre-training: the SFT step and evaluation unchanged, on plain text whose every token
    is a target; a document longer than max_seq_len is split into chunks instead of truncated."""

    length_policy: ClassVar[str] = "split into chunks"


def dpo_reference_mode(spec: RunSpec) -> str:
    """DPO's reference is the starting policy: the base with the adapter switched off when a fresh
    adapter is trained on it; otherwise log-probs computed once before the first step."""
    init = spec.init_from
    fresh_adapter = spec.method == "lora" and (init is None or init.kind == "full")
    return "adapter_off" if fresh_adapter else "precomputed"


class DpoObjective(Objective):
    """Direct preference optimization (sigmoid loss) against a frozen reference."""

    pairs: ClassVar[bool] = True

    def __init__(self, forward: Forward, beta: float, reference_mode: str) -> None:
        super().__init__(forward)
        self.beta = beta
        self.reference_mode = reference_mode
        self.reference: dict[str, torch.Tensor] = {}  # split -> (pairs, 2) log-probs, when precomputed

    @classmethod
    def create(cls, spec: RunSpec, forward: Forward) -> Objective:
        return cls(forward, spec.hyperparameters.dpo_beta, dpo_reference_mode(spec))

    def describe(self) -> str:
        return f", dpo beta {self.beta}, reference {self.reference_mode}"

    def start(self, model: Any, splits: dict[str, list[Any]], no_grad: NoGradRetry, micro: int) -> str | None:
        if self.reference_mode != "precomputed":
            return None
        work = lambda size: self.reference_pass(model, splits, size)  # noqa: E731
        self.reference = no_grad.run("the DPO reference pass", work, micro)
        return f"dpo: reference log-probs computed for {len(splits['train'])} pair(s)"

    def resume(self, ckpt: Path) -> None:
        if self.reference_mode != "precomputed":
            return
        if not (ckpt / REFERENCE_FILE).is_file():
            raise RuntimeError(f"resume_from {ckpt} has no {REFERENCE_FILE} for the DPO reference")
        self.reference = torch.load(ckpt / REFERENCE_FILE, weights_only=True)

    def checkpoint_files(self) -> dict[str, Any] | None:
        return {REFERENCE_FILE: self.reference} if self.reference_mode == "precomputed" else None

    @torch.no_grad()
    def reference_pass(
        self, model: Any, splits: dict[str, list[Pair]], micro: int
    ) -> dict[str, torch.Tensor]:
        model.eval()
        out = {}
        for split, items in splits.items():
            rows = []
            for chunk in chunks(items, micro):
                chosen, rejected, *_ = self.forward.pair_logps(model, chunk)
                rows.append(torch.stack([chosen, rejected], dim=1).float().cpu())
            out[split] = torch.cat(rows) if rows else torch.zeros((0, 2))
        model.train()
        return out

    def _reference_logps(
        self, model: Any, pairs: list[Pair], split: str, indices: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reference_mode == "adapter_off":
            with torch.no_grad(), model.disable_adapter():
                chosen, rejected, *_ = self.forward.pair_logps(model, pairs)
            return chosen, rejected
        ref = self.reference[split][indices].to(self.forward.device)
        return ref[:, 0], ref[:, 1]

    def prefetch(self, items: list[Pair], micro: int) -> None:
        self.forward.prefetch([self.forward.pair_examples(c) for c in chunks(items, micro)], pack=False)

    def step_units(self, items: list[Any]) -> int:
        return len(items)

    def step(
        self, model: Any, items: list[Pair], indices: list[int], micro: int, units: int | None = None
    ) -> StepResult:
        result = StepResult(units=len(items) if units is None else units)
        margin_sum: torch.Tensor | float = 0.0
        wins: torch.Tensor | int = 0
        for chunk, chunk_idx in zip(chunks(items, micro), chunks(indices, micro), strict=True):
            ref_chosen, ref_rejected = self._reference_logps(model, chunk, "train", chunk_idx)
            chosen, rejected, batch, n, correct = self.forward.pair_logps(model, chunk)
            losses, margin = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
            (losses.sum() / result.units).backward()
            result.loss_sum += losses.detach().double().sum()
            margin_sum += margin.detach().double().sum()
            wins += (margin.detach() > 0).sum()
            result.targets += n
            result.correct += correct
            result.real_tokens += batch.real_tokens
            result.positions += batch.positions
        result.extra = {
            "reward_accuracy": torch.as_tensor(wins, dtype=torch.float64) / result.units,
            "reward_margin": torch.as_tensor(margin_sum, dtype=torch.float64) / result.units,
        }
        return result

    def eval_chunk(self, model: Any, chunk: list[Pair], indices: list[int], sums: EvalSums) -> None:
        ref_chosen, ref_rejected = self._reference_logps(model, chunk, "eval", indices)
        chosen, rejected, batch, n, ok = self.forward.pair_logps(model, chunk)
        losses, margin = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta)
        sums.loss_sum += float(losses.sum())
        sums.units += len(chunk)
        sums.values.setdefault("margin", []).extend(margin.float().tolist())
        sums.tokens += int(n)
        sums.correct += int(ok)

    def eval_metrics(self, sums: EvalSums) -> dict[str, float]:
        metrics = super().eval_metrics(sums)
        margins = sums.values.get("margin", [])
        metrics["eval_reward_accuracy"] = sum(m > 0 for m in margins) / max(1, sums.units)
        metrics["eval_reward_margin"] = sum(margins) / max(1, len(margins))
        return metrics


OBJECTIVES: dict[str, type[Objective]] = {
    "sft": SftObjective,
    "pretrain": PretrainObjective,
    "dpo": DpoObjective,
}
