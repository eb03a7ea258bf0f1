"""The one Run state machine; every dialect maps its statuses onto these states."""

from __future__ import annotations

from enum import StrEnum

from tunehouse.core.errors import Conflict


class RunState(StrEnum):
    VALIDATING = "validating"
    QUEUED = "queued"
    RUNNING = "running"
    STOPPING = "stopping"
    PAUSING = "pausing"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


TERMINAL = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED})
ACTIVE = frozenset({RunState.RUNNING, RunState.STOPPING, RunState.PAUSING})
# Runs that hold or wait for a trainer: what an account's limit on active runs counts (paused ones free it).
WANTS_TRAINER = frozenset({RunState.VALIDATING, RunState.QUEUED} | ACTIVE)

_ALLOWED: dict[RunState, frozenset[RunState]] = {
    RunState.VALIDATING: frozenset({RunState.QUEUED, RunState.FAILED, RunState.STOPPED}),
    # queued → queued is not a move; running → queued is the crash-recovery requeue.
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.STOPPED, RunState.FAILED, RunState.PAUSED}),
    RunState.RUNNING: frozenset(
        {RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPING, RunState.PAUSING, RunState.QUEUED}
    ),
    # A trainer may finish its last step before it sees the signal: that run succeeded.
    RunState.STOPPING: frozenset({RunState.STOPPED, RunState.FAILED, RunState.SUCCEEDED}),
    RunState.PAUSING: frozenset({RunState.PAUSED, RunState.STOPPING, RunState.FAILED, RunState.SUCCEEDED}),
    RunState.PAUSED: frozenset({RunState.QUEUED, RunState.STOPPED}),
}


def can_move(current: str, target: RunState) -> bool:
    return target in _ALLOWED.get(RunState(current), frozenset())


def check_move(current: str, target: RunState) -> RunState:
    if not can_move(current, target):
        raise Conflict(f"run is {current}; it cannot become {target}")
    return target


def is_terminal(state: str) -> bool:
    return RunState(state) in TERMINAL
