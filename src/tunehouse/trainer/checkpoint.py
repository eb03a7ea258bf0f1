"""Checkpoints that allow an exact resume: weights, optimizer, scheduler, RNG and data position."""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from .diskspace import written_whole

if TYPE_CHECKING:
    from .store_sync import StoreSync

STATE_FILE = "trainer_state.json"
METRICS_FILE = "metrics.json"
REFERENCE_FILE = "reference_logps.pt"  # full DPO: the frozen reference's log-probs, computed once


@dataclass
class TrainState:
    step: int = 0  # optimizer steps completed
    epoch: int = 0  # 0-based epoch the next batch belongs to
    batch_index: int = 0  # next batch within that epoch
    order: list[int] = field(default_factory=list)  # shuffled example order of the current epoch
    total_steps: int = 0
    steps_per_epoch: int = 0
    train_examples: int = 0
    method: str = ""
    run_id: str = ""
    trained_tokens: int = 0  # real (non-pad) tokens trained on, across resumes
    examples_per_step: int = 0  # batch_size * gradient_accumulation_steps
    micro_batch_size: int = 0  # examples per forward pass; an OOM retry halves it for good
    world_size: int = 1  # ranks that trained it; a resume needs as many


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.random.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(ckpt: Path) -> None:
    state = torch.load(ckpt / "rng.pt", weights_only=False)
    random.setstate(state["python"])
    torch.random.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    dest: Path,
    model: Any,
    tokenizer: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainState,
    metrics: dict[str, float],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint next to ``dest`` and rename it into place, so readers never see half."""
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    with written_whole(tmp, dest):
        tmp.mkdir(parents=True)
        # save_pretrained writes only the adapter for a PEFT model, so the checkpoint is also a
        # loadable model/adapter in its own right.
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(_rng_state(), tmp / "rng.pt")
        (tmp / STATE_FILE).write_text(json.dumps(asdict(state)), encoding="utf-8")
        (tmp / METRICS_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
        for name, value in (extra or {}).items():
            torch.save(value, tmp / name)
        if dest.exists():
            shutil.rmtree(dest)  # a stale checkpoint of the same step from an earlier, abandoned attempt
        os.rename(tmp, dest)
    return dest


def load_state(ckpt: Path) -> TrainState:
    return TrainState(**json.loads((ckpt / STATE_FILE).read_text(encoding="utf-8")))


def is_checkpoint(path: Path) -> bool:
    # A multi-rank run keeps its optimizer in the sharded state (trainer/distributed.py).
    optimizer = (path / "optimizer.pt").is_file() or (path / "dcp" / ".metadata").is_file()
    return (path / STATE_FILE).is_file() and optimizer


def is_lora_checkpoint(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _step_of(path: Path) -> int | None:
    name = path.name
    if not name.startswith("step-") or not name[5:].isdigit():
        return None
    return int(name[5:])


def list_checkpoints(root: Path) -> list[tuple[int, Path, dict[str, Any]]]:
    """(step, path, metrics) of every complete checkpoint under ``root``, oldest first."""
    found = []
    for path in Path(root).glob("step-*"):
        step = _step_of(path)
        if step is None or not is_checkpoint(path):
            continue
        try:
            metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
        found.append((step, path, metrics))
    return sorted(found, key=lambda c: c[0])


def best_step(checkpoints: list[tuple[int, Path, dict[str, Any]]]) -> int | None:
    """The step with the lowest eval_loss (the earliest on ties); None without evaluations."""
    scored = [
        (m["eval_loss"], step) for step, _, m in checkpoints if isinstance(m.get("eval_loss"), int | float)
    ]
    return min(scored)[1] if scored else None


def rotate(root: Path, keep_last: int, upto: int | None = None) -> list[tuple[int, Path]]:
    """Delete all but the last ``keep_last`` checkpoints and the best by eval_loss; 0 keeps all.

    Only steps up to ``upto`` count: after resuming from an earlier checkpoint, later ones on disk
    belong to an abandoned attempt and will be overwritten, not ranked as "the last".
    """
    if keep_last <= 0:
        return []
    checkpoints = [c for c in list_checkpoints(root) if upto is None or c[0] <= upto]
    keep = {step for step, _, _ in checkpoints[-keep_last:]}
    best = best_step(checkpoints)
    if best is not None:
        keep.add(best)
    deleted = []
    for step, path, _ in checkpoints:
        if step not in keep:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append((step, path))
    return deleted


class Checkpointer:
    """A run's ``step-N`` checkpoints of one model under one folder: each written whole, the best by
    eval_loss named, old ones rotated away (the last ``keep_last`` plus the best stay; 0 keeps all).

    With a ``store`` the folder is local scratch and each checkpoint is also uploaded to the run's folder
    in the artifact store (publish), where rotation deletes it too. Every rank of a multi-rank run has
    the store (a rank on a disk of its own uploads its shards); rank 0 alone publishes and rotates."""

    def __init__(
        self,
        root: Path,
        keep_last: int,
        model: Any,
        tokenizer: Any,
        optimizer: Any,
        scheduler: Any,
        store: StoreSync | None = None,
        dist: Any = None,
    ) -> None:
        self.root = root
        self.keep_last = keep_last
        self.parts = (model, tokenizer, optimizer, scheduler)
        self.store = store
        self.dist = dist  # distributed.Dist of a multi-rank run

    def save(
        self, state: TrainState, metrics: dict[str, float], extra: dict[str, Any] | None
    ) -> tuple[Path, bool]:
        """(its path, whether it is the best so far) of the checkpoint of ``state.step``."""
        path = self.root / f"step-{state.step}"
        if self.dist is not None and self.dist.active:
            from .distributed import save_checkpoint as save_sharded

            save_sharded(path, *self.parts, state, metrics, extra, self.dist, store=self.store)
        else:
            save_checkpoint(path, *self.parts, state, metrics, extra)
        current = [c for c in list_checkpoints(self.root) if c[0] <= state.step]
        return path, best_step(current) == state.step

    def publish(self, path: Path) -> str:
        """Where the checkpoint at ``path`` is durably kept: uploaded whole first when there is a store
        (its state file last, so a partial upload is never taken for a checkpoint); rank 0 uploads its
        folder, after every rank on a disk of its own has uploaded its shards (distributed.py)."""
        if self.store is None or (self.dist is not None and not self.dist.is_main):
            return str(path)
        sharded = self.dist is not None and self.dist.active
        # A sharded save cleared the store's stale copy before the other ranks uploaded into it.
        return self.store.publish_checkpoint(path, last=STATE_FILE, replace=not sharded)

    def rotate(self, upto: int) -> list[tuple[int, str]]:
        if self.dist is not None and not self.dist.is_main:
            return []  # rank 0 deletes
        deleted = rotate(self.root, self.keep_last, upto=upto)
        if self.store is None:
            return [(step, str(path)) for step, path in deleted]
        return [(step, self.store.delete(path)) for step, path in deleted]
