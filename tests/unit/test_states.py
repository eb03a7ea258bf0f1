"""The run state machine: which moves are allowed, and that terminal states are final."""

from __future__ import annotations

import pytest

from tunehouse.core.errors import Conflict
from tunehouse.core.states import RunState, can_move, check_move, is_terminal

S = RunState

ALLOWED = [
    (S.VALIDATING, S.QUEUED),
    (S.VALIDATING, S.FAILED),
    (S.QUEUED, S.RUNNING),
    (S.QUEUED, S.STOPPED),
    (S.QUEUED, S.FAILED),
    (S.RUNNING, S.SUCCEEDED),
    (S.RUNNING, S.FAILED),
    (S.RUNNING, S.STOPPING),
    (S.RUNNING, S.PAUSING),
    (S.RUNNING, S.QUEUED),  # crash-recovery requeue
    (S.STOPPING, S.STOPPED),
    (S.STOPPING, S.SUCCEEDED),  # the trainer finished its last step before it saw the stop
    (S.PAUSING, S.PAUSED),
    (S.PAUSED, S.QUEUED),
    (S.PAUSED, S.STOPPED),
]

FORBIDDEN = [
    (S.SUCCEEDED, S.RUNNING),
    (S.FAILED, S.QUEUED),
    (S.STOPPED, S.QUEUED),
    (S.QUEUED, S.SUCCEEDED),  # a run cannot finish without having run
    (S.QUEUED, S.STOPPING),
    (S.QUEUED, S.QUEUED),
    (S.STOPPING, S.RUNNING),
    (S.STOPPING, S.STOPPING),
    (S.PAUSED, S.RUNNING),
    (S.RUNNING, S.STOPPED),  # a running trainer must be asked to stop first
]


@pytest.mark.parametrize(("current", "target"), ALLOWED, ids=lambda s: str(s))
def test_allowed_move_is_accepted_and_returns_the_target(current, target):
    assert can_move(current, target)
    assert check_move(current, target) == target


@pytest.mark.parametrize(("current", "target"), FORBIDDEN, ids=lambda s: str(s))
def test_forbidden_move_raises_conflict(current, target):
    assert not can_move(current, target)
    with pytest.raises(Conflict):
        check_move(current, target)


def test_conflict_message_names_the_current_and_the_requested_state():
    with pytest.raises(Conflict) as info:
        check_move("succeeded", S.RUNNING)

    assert "succeeded" in info.value.message
    assert "running" in info.value.message


@pytest.mark.parametrize("terminal", [S.SUCCEEDED, S.FAILED, S.STOPPED], ids=str)
def test_terminal_state_admits_no_move_at_all(terminal):
    assert [t for t in RunState if can_move(terminal, t)] == []


@pytest.mark.parametrize("state", list(RunState), ids=str)
def test_exactly_succeeded_failed_and_stopped_are_terminal(state):
    assert is_terminal(state) == (state in {S.SUCCEEDED, S.FAILED, S.STOPPED})


def test_states_are_accepted_as_their_stored_strings():
    assert can_move("running", S.STOPPING)
    assert is_terminal("stopped")
