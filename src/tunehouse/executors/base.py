"""The interface every executor offers the scheduler: start, poll, stop, kill."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Exit:
    """How a trainer process ended; `code` is None when it was not our child (reattached after a restart)."""

    code: int | None


@dataclass(frozen=True)
class Resources:
    """What one run asks to be placed on; None leaves the choice to the executor (see each one)."""

    gpus: int | None = None
    cpus: float | None = None
    memory_mb: int | None = None


# Runtime-checkable so that a test can hold any executor (a fake one too) to this interface.
@runtime_checkable
class Executor(Protocol):
    name: str

    def start(
        self,
        run_key: str,
        spec_path: Path,
        run_dir: Path,
        gpu: str | None = None,
        resources: Resources | None = None,
        attempt: int = 1,
    ) -> dict[str, Any]:
        """Launch the trainer, on ``gpu`` alone when given; the returned handle is stored with the run and
        survives restarts. ``attempt`` counts the run's launches from 1 (a resume is a new attempt)."""
        ...

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        """None while the trainer is alive."""
        ...

    def stop(self, handle: dict[str, Any]) -> None:
        """Ask the trainer to checkpoint and exit (SIGTERM semantics)."""
        ...

    def kill(self, handle: dict[str, Any]) -> None: ...


def launched(handle: dict[str, Any]) -> bool:
    """Whether a handle names a started trainer: a local pid or a Ray submission."""
    return bool(handle.get("pid") or handle.get("submission_id"))
