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


def resources_of(extra: dict[str, Any]) -> Resources:
    """What a run (its ``extra``) asks to be placed on: its ``gpus``, its own ``resources`` ({gpus, cpus,
    memory_mb}), or what a dialect stored for it (Qianfan's ``resourceConfig``: {gpus, cpus, memoryMB});
    unset fields are the executor's."""
    given = extra.get("resources") or {}
    qianfan = extra.get("resourceConfig") or {}
    if not isinstance(given, dict) or not isinstance(qianfan, dict):
        raise ValueError("the run's resource request is not an object")

    def pick(*values: Any) -> Any:
        return next((v for v in values if v is not None), None)

    # The contract's own field (RunSpec.gpus, kept in extra) when it asks for several; its default of one is
    # "one device", which leaves the executor to choose a GPU or, on a cluster without any, the CPU.
    asked = extra.get("gpus")
    several = asked if isinstance(asked, int) and asked > 1 else None
    gpus = pick(several, given.get("gpus"), qianfan.get("gpus"))
    cpus = pick(given.get("cpus"), qianfan.get("cpus"))
    memory = pick(given.get("memory_mb"), qianfan.get("memoryMB"))
    return Resources(
        gpus=None if gpus is None else _count(gpus, "gpus", int),
        cpus=None if cpus is None else _count(cpus, "cpus", float),
        memory_mb=None if memory is None else _count(memory, "memory_mb", int),
    )


def _count(value: Any, name: str, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"the run's resource request {name}={value!r} is not a non-negative number")
    return kind(value)


def workers_of(extra: dict[str, Any]) -> int:
    """How many trainer processes (ranks) a run trains on: the contract's ``gpus`` (RunSpec.gpus)."""
    value = extra.get("gpus", 1)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 1 else 1


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

    def refusal(self, workers: int, resources: Resources) -> str | None:
        """Why a run of ``workers`` ranks asking for ``resources`` can never be placed (asked when the run
        is created; None when it can, or when the executor cannot tell now: the launch checks again)."""
        ...


def launched(handle: dict[str, Any]) -> bool:
    """Whether a handle names a started trainer: a local pid or a Ray submission."""
    return bool(handle.get("pid") or handle.get("submission_id"))
