"""The trainer's event log: one JSON object per line, appended by the trainer and read by the server.

The types name what the trainer may write; the readers are what the scheduler (and tests) parse it with.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

EventType = Literal[
    "status", "log", "progress", "metrics", "checkpoint", "checkpoint_deleted", "model", "error"
]
TrainerState = Literal["loading", "running", "succeeded", "stopped", "failed"]
ErrorKind = Literal["data", "runtime", "nan"]


def tail_events(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """Parse complete lines from byte ``offset`` on; return them and the offset to resume from.

    A last line without its newline is still being written, so it is left for the next call.
    """
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    events, end = parse_lines(data)
    return events, offset + end


def parse_lines(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """The events of the complete lines of ``data`` and how many bytes they took (a torn last line waits)."""
    end = data.rfind(b"\n") + 1
    events: list[dict[str, Any]] = []
    for raw in data[:end].splitlines():
        event = _parse(raw)
        if event is not None:
            events.append(event)
    return events, end


def read_events(path: Path, after_seq: int = 0) -> list[dict[str, Any]]:
    """All events with ``seq > after_seq``; a torn or corrupt line is skipped, not fatal."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    events = []
    for raw in data.splitlines():
        event = _parse(raw)
        if event is not None and event["seq"] > after_seq:
            events.append(event)
    return events


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        event = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(event, dict) or not isinstance(event.get("seq"), int):
        return None
    return event
