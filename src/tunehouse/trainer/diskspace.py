"""Writing to a disk that may fill up: no half-written files left behind, and the reason said plainly.

Free of torch, so the trainer's entry point can use it before torch is loaded.
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FULL_BELOW = 1 << 20  # bytes free under which a failed write is put down to a full disk


class OutOfSpace(OSError):
    """The disk filled up while writing ``path``; what was half written is gone again."""

    def __init__(self, path: Path, detail: str = "") -> None:
        super().__init__(errno.ENOSPC, "no space left on device", str(path))
        self.detail = detail

    def __str__(self) -> str:
        said = f"no space left on device while writing {self.filename}"
        return f"{said} ({self.detail})" if self.detail else said


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def ensure_room(final: Path, needed: int, reserve: int) -> None:
    """Refuse to start writing ``final`` (about ``needed`` bytes) unless ``reserve`` bytes stay free after
    it: a volume filled to the last byte leaves the server no room to record why the run stopped."""
    try:
        free = shutil.disk_usage(final.parent).free
    except OSError:
        return
    if free < needed + reserve:
        kib = (free // 1024, needed // 1024, reserve // 1024)
        detail = "{} KiB free; it needs about {} KiB and {} KiB must stay free".format(*kib)
        raise OutOfSpace(final, detail)


def disk_full(path: Path, exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    # torch.save reports a failed write as an opaque RuntimeError; a volume with no room left explains it.
    try:
        return shutil.disk_usage(path).free < FULL_BELOW
    except OSError:
        return False


@contextmanager
def written_whole(tmp: Path, final: Path) -> Iterator[None]:
    """Around writing ``tmp`` (then renaming it to ``final``): on failure ``tmp`` is removed, and a full
    disk is raised as OutOfSpace naming ``final``."""
    try:
        yield
    except BaseException as exc:
        full = not isinstance(exc, OutOfSpace) and disk_full(tmp.parent, exc)  # before removal frees room
        shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise OutOfSpace(final) from exc
        raise
