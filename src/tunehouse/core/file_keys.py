"""File keys by row id, remembered per process: a file's key never changes, and every job rendering names
its training files, so polling would otherwise query them on each request."""

from __future__ import annotations

import threading

from cachetools import LRUCache
from sqlalchemy import Connection, select
from sqlalchemy.orm import Session

from tunehouse.store.models import File

_known: LRUCache[int, str] = LRUCache(maxsize=100_000)
_lock = threading.Lock()


def file_keys(s: Session | Connection, ids: list[int]) -> dict[int, str]:
    """The key of each of these files that exists (deleted ones included: a job stays named by them)."""
    with _lock:
        found = {i: _known[i] for i in ids if i in _known}
    missing = [i for i in ids if i not in found]
    if missing:
        rows = dict(s.execute(select(File.id, File.key).where(File.id.in_(missing))).tuples().all())
        with _lock:
            _known.update(rows)
        found.update(rows)
    return found
