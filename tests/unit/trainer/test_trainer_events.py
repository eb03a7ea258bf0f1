"""The event log: strictly increasing seq, resumable numbering, tolerant tailing."""

from __future__ import annotations

import io
import json
from pathlib import Path

from tunehouse.trainer.events import EventWriter, read_events, tail_events


def test_events_go_to_file_and_stream_with_increasing_seq(tmp_path: Path) -> None:
    stream = io.StringIO()
    with EventWriter(tmp_path / "events.jsonl", stream) as events:
        events.status("loading")
        events.log("hello")
    from_file = read_events(tmp_path / "events.jsonl")
    from_stream = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert from_file == from_stream
    assert [e["seq"] for e in from_file] == [1, 2]
    assert from_file[0]["time"].endswith("Z") and from_file[1]["payload"] == {"message": "hello"}


def test_reopening_continues_after_last_seq(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventWriter(path, None) as events:
        events.log("a")
        events.log("b")
    with EventWriter(path, None) as events:
        events.log("c")
    assert [e["seq"] for e in read_events(path)] == [1, 2, 3]
    assert [e["payload"]["message"] for e in read_events(path, after_seq=2)] == ["c"]


def test_partial_last_line_is_ignored_and_not_glued_to_new_events(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventWriter(path, None) as events:
        events.log("a")
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"seq": 2, "time": "2026-')  # writer died mid-line
    assert [e["seq"] for e in read_events(path)] == [1]
    with EventWriter(path, None) as events:
        events.log("b")
    assert [e["seq"] for e in read_events(path)] == [1, 2]


def test_tail_events_only_consumes_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    with EventWriter(path, None) as events:
        events.log("a")
    first, offset = tail_events(path)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"seq": 2')
    assert tail_events(path, offset) == ([], offset)
    assert [e["seq"] for e in first] == [1]


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    with EventWriter(tmp_path / "events.jsonl", None) as events:
        events.emit("metrics", {"step": 1, "train_loss": float("nan")})
    assert read_events(tmp_path / "events.jsonl")[0]["payload"] == {"step": 1, "train_loss": None}


def test_missing_file_reads_as_no_events(tmp_path: Path) -> None:
    assert read_events(tmp_path / "nope.jsonl") == []
