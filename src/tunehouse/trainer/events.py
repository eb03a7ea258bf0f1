"""The trainer's side of the event log (tunehouse.contract.events): an append-only writer."""

from __future__ import annotations

import json
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

# read_events and tail_events are re-exported: the trainer's tests and tools read logs through this module.
from tunehouse.contract.events import ErrorKind, EventType, read_events, tail_events
from tunehouse.contract.events import TrainerState as RunState

from .store_sync import URGENT

if TYPE_CHECKING:
    from .store_sync import EventMirror

__all__ = ["EventWriter", "read_events", "tail_events"]


def _now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class EventWriter:
    """Writes each event to the log file and stdout, flushed per line.

    Reopening an existing log (resume into the same output_dir) continues after its last seq.
    ``path=None`` writes to the stream only, for failures that happen before output_dir is known.
    With a ``mirror`` the log is copied to the artifact store as it grows (the mirror has pulled the
    store's log into ``path`` already).
    """

    def __init__(
        self, path: Path | None, stream: TextIO | None = sys.stdout, mirror: EventMirror | None = None
    ) -> None:
        self.path = path
        self.stream = stream
        self.seq = 0
        self.mirror = mirror
        self._fh: TextIO | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            existing = read_events(path)
            self.seq = max((e["seq"] for e in existing), default=0)
            needs_newline = path.exists() and path.stat().st_size > 0 and not _ends_with_newline(path)
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - lives as long as the writer
            if needs_newline:
                # A crash mid-line must not glue the torn text onto our first event.
                self._fh.write("\n")
        if mirror is not None:
            mirror.start()

    def emit(self, type_: EventType, payload: dict[str, Any]) -> dict[str, Any]:
        self.seq += 1
        event = {"seq": self.seq, "time": _now(), "type": type_, "payload": payload}
        try:
            line = json.dumps(event, ensure_ascii=False, allow_nan=False)
        except ValueError:
            # NaN/Infinity are not JSON; readers in other languages would choke on them.
            event["payload"] = _finite(payload)
            line = json.dumps(event, ensure_ascii=False, allow_nan=False)
        if self._fh is not None:
            self._fh.write(line + "\n")
            self._fh.flush()
            if self.mirror is not None:
                self.mirror.changed(urgent=type_ in URGENT)
        if self.stream is not None:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (BrokenPipeError, ValueError, OSError):
                # The file is the record; a vanished stdout reader must not kill training.
                self.stream = None
        return event

    def status(self, state: RunState) -> dict[str, Any]:
        return self.emit("status", {"state": state})

    def log(self, message: str) -> dict[str, Any]:
        return self.emit("log", {"message": message})

    def error(self, reason: str, kind: ErrorKind) -> dict[str, Any]:
        return self.emit("error", {"reason": reason, "kind": kind})

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.mirror is not None:
            mirror, self.mirror = self.mirror, None
            mirror.close()  # the last events (the final status) reach the store before we exit

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"
