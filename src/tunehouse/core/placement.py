"""Create-time refusal of a run that can never be placed: the server's executor answers (installed at start).

Refusing at create time tells the caller at once, in its own dialect, instead of a run that fails at its
first tick; the scheduler's check at launch stays, for a cluster that shrank after the run was created.
The core knows no executor: the server installs one check, a function of the run's ``extra`` (its ``gpus``
and resource requests) answering why it cannot be placed, or None.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import InvalidParameter

Check = Callable[[dict[str, Any]], str | None]

_check: Check | None = None


def install(check: Check | None) -> None:
    """The server's check (None removes it: no refusal at create time, the launch still checks)."""
    global _check
    _check = check


def refuse_unplaceable(extra: dict[str, Any]) -> None:
    """Raise InvalidParameter, naming the field that asked, when the run can never be placed."""
    if _check is None:
        return
    reason = _check(extra)
    if reason is not None:
        raise InvalidParameter(_asking_field(extra), f"the run cannot be placed: {reason}")


def _asking_field(extra: dict[str, Any]) -> str:
    gpus = extra.get("gpus")
    if isinstance(gpus, int) and gpus > 1:
        return "gpus"
    for key in ("resourceConfig", "resources"):
        given = extra.get(key)
        if isinstance(given, dict) and given.get("gpus") is not None:
            return f"{key}.gpus"
    return "gpus"
