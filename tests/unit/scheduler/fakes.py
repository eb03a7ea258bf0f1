"""A fake executor and a settable clock, to drive the scheduler tick by tick with no process and no sleep.

A FakeHost is one machine's process table, shared by every executor on it as the OS is: a scheduler
restarted on the same node (a new FakeExecutor) finds its trainers still running but no longer its
children, so it learns no exit code, exactly as LocalExecutor after a server restart. A FakeTrainer does
nothing by itself: the test speaks for it (its events, in the contract's line format, in its run
directory, where the scheduler reads the real trainer's) and decides when and how it exits.
"""

from __future__ import annotations

import itertools
import json
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tunehouse.contract.events import ErrorKind, EventType, TrainerState, read_events
from tunehouse.contract.spec import EXIT_STOPPED, EXIT_SUCCEEDED, RunSpec, load_spec
from tunehouse.executors.base import Exit, Resources

SIGTERM = "SIGTERM"
SIGKILL = "SIGKILL"
KILLED = -9  # how a process killed by SIGKILL exits, as Popen reports it


class FakeClock:
    """The scheduler's 'now' (aware UTC, whole seconds, as core.clock gives it); moves only when told."""

    def __init__(self, start: datetime = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class FakeTrainer:
    """One trainer process, as seen from outside: its spec, the signals it got, and its exit."""

    pid: int
    spec_path: Path
    run_dir: Path
    gpu: str | None
    signals: list[str] = field(default_factory=list)
    code: int | None = None  # set once it has exited

    @property
    def alive(self) -> bool:
        return self.code is None

    @property
    def spec(self) -> RunSpec:
        return load_spec(self.spec_path)

    @property
    def events_path(self) -> Path:
        return self.run_dir / "events.jsonl"

    def emit(self, type_: EventType, payload: dict[str, Any]) -> None:
        """Append one event line; a trainer resumed into the same directory continues the log's seq."""
        seq = max((e["seq"] for e in read_events(self.events_path)), default=0) + 1
        event = {"seq": seq, "time": "2026-01-01T12:00:00.000Z", "type": type_, "payload": payload}
        with open(self.events_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")

    def status(self, state: TrainerState) -> None:
        self.emit("status", {"state": state})

    def progress(self, step: int, total_steps: int) -> None:
        self.emit(
            "progress", {"step": step, "total_steps": total_steps, "percent": 100 * step // total_steps}
        )

    def checkpoint_path(self, step: int) -> str:
        return str(self.run_dir / "checkpoints" / f"step-{step}")

    def checkpoint(self, step: int) -> str:
        path = self.checkpoint_path(step)
        self.emit("checkpoint", {"step": step, "path": path, "metrics": {}})
        return path

    def error(self, reason: str, kind: ErrorKind = "runtime") -> None:
        self.emit("error", {"reason": reason, "kind": kind})

    def exit(self, code: int) -> None:
        self.code = code

    def succeed(self) -> None:
        """What the real trainer does at the end: report the model, say succeeded, exit 0."""
        self.emit("model", {"path": str(self.run_dir / "model"), "kind": "lora_adapter"})
        self.status("succeeded")
        self.exit(EXIT_SUCCEEDED)

    def honour_stop(self, step: int) -> None:
        """What the real trainer does on SIGTERM: checkpoint, say stopped, exit 3."""
        self.checkpoint(step)
        self.status("stopped")
        self.exit(EXIT_STOPPED)


# Pids are never reused, nor shared by two hosts: a handle names one trainer, as a real one does by its
# pid and start time.
_PIDS = itertools.count(1000)


class FakeHost:
    """One machine's processes."""

    def __init__(self) -> None:
        self.processes: dict[int, FakeTrainer] = {}
        self._pids = _PIDS
        self._lock = threading.Lock()  # schedulers on one host may start trainers from several threads

    def spawn(self, spec_path: Path, run_dir: Path, gpu: str | None) -> FakeTrainer:
        with self._lock:
            trainer = FakeTrainer(next(self._pids), spec_path, run_dir, gpu)
            self.processes[trainer.pid] = trainer
            return trainer

    def alive(self) -> list[FakeTrainer]:
        return [t for t in self.processes.values() if t.alive]


class FakeExecutor:
    """The executor interface (tunehouse.executors.base.Executor) over a FakeHost, with LocalExecutor's
    semantics: exit codes for its own children only, None while alive, Exit(None) for a trainer that is gone
    and was not its child."""

    name = "fake"

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self._children: set[int] = set()
        self.refuse_start: str | None = None  # set to make start() fail with this reason
        self.poll_errors: dict[
            int, Exception
        ] = {}  # pid -> what polling it raises, as a flaky executor's might

    def start(
        self,
        run_key: str,
        spec_path: Path,
        run_dir: Path,
        gpu: str | None = None,
        resources: Resources | None = None,
        attempt: int = 1,
    ) -> dict[str, Any]:
        if self.refuse_start is not None:
            raise OSError(self.refuse_start)
        trainer = self.host.spawn(spec_path, run_dir, gpu)
        self._children.add(trainer.pid)
        return {"pid": trainer.pid}

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        pid = int(handle.get("pid", 0))
        if pid in self.poll_errors:
            raise self.poll_errors[pid]
        trainer = self.host.processes.get(pid)
        if pid in self._children and trainer is not None:
            if trainer.alive:
                return None
            self._children.discard(pid)
            return Exit(trainer.code)
        return None if trainer is not None and trainer.alive else Exit(None)

    def stop(self, handle: dict[str, Any]) -> None:
        trainer = self.host.processes.get(int(handle.get("pid", 0)))
        if trainer is not None and trainer.alive:
            trainer.signals.append(SIGTERM)

    def kill(self, handle: dict[str, Any]) -> None:
        trainer = self.host.processes.get(int(handle.get("pid", 0)))
        if trainer is not None and trainer.alive:
            trainer.signals.append(SIGKILL)
            trainer.exit(KILLED)

    def refusal(self, workers: int, resources: Resources) -> str | None:
        return None  # a fake host places anything
