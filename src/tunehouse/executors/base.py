"""The interface every executor offers the scheduler: start, poll, stop, kill."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Exit:
    """How a trainer process ended; `code` is None when it was not our child (reattached after a restart)."""

    code: int | None


# Runtime-checkable so that a test can hold any executor (a fake one too) to this interface.
@runtime_checkable
class Executor(Protocol):
    name: str

    def start(self, run_key: str, spec_path: Path, run_dir: Path, gpu: str | None = None) -> dict[str, Any]:
        """Launch the trainer, on ``gpu`` alone when given; the returned handle is stored with the run and
        survives restarts."""
        ...

    def poll(self, handle: dict[str, Any]) -> Exit | None:
        """None while the trainer is alive."""
        ...

    def stop(self, handle: dict[str, Any]) -> None:
        """Ask the trainer to checkpoint and exit (SIGTERM semantics)."""
        ...

    def kill(self, handle: dict[str, Any]) -> None: ...
