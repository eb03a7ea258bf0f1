"""Running out of disk: recognised wherever it surfaces, and refused up front for new work."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from tunehouse.core.errors import DomainError


class InsufficientStorage(DomainError):
    """No room for what the request would write; it succeeds once space is freed."""


def out_of_space(exc: BaseException) -> bool:
    """ENOSPC/EDQUOT, SQLite's SQLITE_FULL or PostgreSQL's disk_full, anywhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for candidate in (current, getattr(current, "orig", None)):  # orig: the driver's own error
            if isinstance(candidate, OSError) and candidate.errno in (errno.ENOSPC, errno.EDQUOT):
                return True
            if getattr(candidate, "sqlite_errorname", None) == "SQLITE_FULL":
                return True
            if getattr(candidate, "sqlstate", None) == "53100":
                return True
        current = current.__cause__ or current.__context__
    return False


def check_room(home: Path, reserve_bytes: int) -> None:
    """Refuse new work while the home volume has less than ``reserve_bytes`` free: a create or upload
    that got in would fail half-way, or leave running trainers no room for their checkpoints."""
    try:
        free = shutil.disk_usage(home).free
    except OSError:
        return  # an unreadable volume is the write's own problem to report
    if free < reserve_bytes:
        raise InsufficientStorage(
            f"Insufficient storage: no space left on device for {home} ({free // 1024} KiB free, "
            f"{reserve_bytes // 1024} KiB kept in reserve). Free some space and try again."
        )


NO_SPACE_MESSAGE = "Insufficient storage: no space left on device. Free some space and try again."
