"""The trainer's side of a run whose folder is in the artifact store (``spec.storage_dir``).

The trainer works in a local scratch folder (``spec.output_dir``) and keeps the store's copy current:
inputs are fetched before anything starts, the event log is mirrored as it grows (at once for the events
that matter: status, checkpoints, the model, errors), every checkpoint is uploaded whole before its event
says it is saved, and the final outputs follow. Writes retry with backoff while the store is unreachable
(tunehouse.storage.retrying), so a short outage costs time, never a checkpoint.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunehouse import storage
from tunehouse.contract.spec import RunSpec

MIRROR_INTERVAL_S = 0.5  # the longest an ordinary event (progress, metrics) waits to reach the store
URGENT = frozenset({"status", "checkpoint", "checkpoint_deleted", "model", "error"})


def fetch_inputs(spec: RunSpec, log: Callable[[str], None]) -> None:
    """Copy every input the spec names from the store to where its local fields expect it. Cached ones
    (base models) land in a per-node cache and are fetched once."""
    for item in spec.fetch:
        started = time.monotonic()
        if item.kind == "file":
            storage.get_file(item.url, item.dest)
        elif item.cached:
            _cached_dir(item.url, item.dest)
        else:
            storage.get_dir(item.url, item.dest)
        log(f"fetched {item.url} in {time.monotonic() - started:.2f}s")


def _cached_dir(url: str, dest: Path) -> None:
    found = storage.cached_dir(url, dest.parent)
    if found != dest:  # the scheduler names the cache folder the same way; say so if it ever does not
        raise RuntimeError(f"cache of {url} is at {found}, the spec expected {dest}")


class EventMirror:
    """Keeps ``url`` a copy of the local event log ``path``. Object stores cannot append, so each upload
    is the whole log; ordinary events are batched (at most one upload per MIRROR_INTERVAL_S), the
    urgent ones are uploaded before emit returns."""

    def __init__(self, path: Path, url: str) -> None:
        self.path = path
        self.url = url
        self._lock = threading.Lock()  # one upload at a time, each of a log at least as long as the last
        self._dirty = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def pull(self) -> None:
        """Start from the store's log (the one the control plane has read), so sequence numbers go on
        from it on any node; a local log the store never got is dropped with it."""
        if storage.isfile(self.url):
            storage.get_file(self.url, self.path)
        else:
            self.path.unlink(missing_ok=True)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="tunehouse-event-mirror", daemon=True)
        self._thread.start()

    def changed(self, urgent: bool) -> None:
        if urgent:
            self.flush()
        else:
            self._dirty.set()

    def flush(self) -> None:
        with self._lock:
            self._dirty.clear()
            try:
                storage.put_file(self.path, self.url)
            except OSError as exc:
                # Out of retries: the next event (or close) tries again; training goes on meanwhile.
                self._dirty.set()
                print(f"tunehouse: could not mirror the event log to {self.url}: {exc}", file=sys.stderr)

    def close(self) -> None:
        self._closed.set()
        self._dirty.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.flush()

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._dirty.wait()
            if self._closed.is_set():
                return
            self.flush()
            self._closed.wait(MIRROR_INTERVAL_S)


class StoreSync:
    """Uploads a run's checkpoints and outputs from scratch to its folder in the store."""

    def __init__(self, spec: RunSpec) -> None:
        assert spec.storage_dir is not None
        self.url = spec.storage_dir
        self.output_dir = spec.output_dir.resolve()
        # Local copies of fetched inputs, to name them by their store location in what we report.
        self.origin = {str(f.dest.resolve()): f.url for f in spec.fetch}

    def location(self, local: Path) -> str:
        """Where the store keeps (or will keep) ``local``, a path under this run's scratch folder."""
        rel = Path(local).resolve().relative_to(self.output_dir).as_posix()
        return storage.join(self.url, rel)

    def publish_checkpoint(self, local: Path, last: str, replace: bool = True) -> str:
        """Upload a checkpoint folder whole (``last`` after everything else); returns its location.
        ``replace=False``: other ranks already put their shards there (see publish_rank_files)."""
        return storage.put_dir(local, self.location(local), last=last, replace=replace)

    def clear(self, local: Path) -> None:
        """Remove what the store keeps at ``local``'s location (a stale copy of an abandoned attempt)."""
        url = self.location(local)
        if storage.has_objects(url):
            storage.remove(url)

    def publish_rank_files(self, folder: Path, final: Path, files: list[Path]) -> str:
        """Upload some files of the checkpoint being written in ``folder`` (its ``step-N.tmp``) to where
        the store keeps ``final`` (its ``step-N``): a rank's own shards, from a disk rank 0 cannot read."""
        url = self.location(final)
        for path in files:
            storage.put_file(path, storage.join(url, path.relative_to(folder).as_posix()))
        return url

    def delete(self, local: Path) -> str:
        url = self.location(local)
        storage.remove(url)
        return url

    def publish_dir(self, local: Path) -> str:
        return storage.put_dir(local, self.location(local))

    def publish_model(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The "model" event's payload with its folders uploaded and named by their store locations."""
        out = dict(payload)
        for key in ("path", "merged_path"):
            if key in out:
                out[key] = self.publish_dir(Path(out[key]))
        base = out.get("base_model_path")
        if base and str(Path(base).resolve()) in self.origin:
            out["base_model_path"] = self.origin[str(Path(base).resolve())]
        return out


def run_log_mirror(spec: RunSpec) -> EventMirror | None:
    """The mirror of the run's event log in the store, pulled (the log so far, from whichever node wrote
    it), when the run lives there; None for a run on local storage."""
    if spec.storage_dir is None:
        return None
    mirror = EventMirror(spec.events_path, storage.join(spec.storage_dir, "events.jsonl"))
    spec.events_path.parent.mkdir(parents=True, exist_ok=True)
    mirror.pull()
    return mirror


def pull_token_cache(spec: RunSpec, entry: Path) -> None:
    """This node's copy of a tokenization cache entry, from the store's cache when it has one."""
    if spec.token_cache_url is None or entry.is_file():
        return
    with contextlib.suppress(OSError):  # a miss, or a store that is down: tokenize instead
        storage.get_file(storage.join(spec.token_cache_url, entry.name), entry)


def push_token_cache(spec: RunSpec, entry: Path) -> None:
    if spec.token_cache_url is None or not entry.is_file():
        return
    with contextlib.suppress(OSError):  # the cache is an optimisation: never fail a run over it
        storage.put_file(entry, storage.join(spec.token_cache_url, entry.name))
