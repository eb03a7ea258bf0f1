"""The trainer's copy of its run in the artifact store: the event log mirrored as it grows, one log across
trainers on different nodes, inputs fetched before the run starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunehouse import storage
from tunehouse.contract.spec import Fetch, RunSpec
from tunehouse.trainer.events import EventWriter
from tunehouse.trainer.store_sync import EventMirror, StoreSync, fetch_inputs

pytestmark = pytest.mark.s3


def stored_events(url: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in storage.read_bytes(url).decode().splitlines()]


def stored_run(s3_root: str, tmp_path: Path, run_id: str, scratch: Path) -> RunSpec:
    """A run living in the store under ``runs/<run_id>``, working in ``scratch``."""
    return RunSpec(
        run_id=run_id,
        model_path=tmp_path / "m",
        train_files=[tmp_path / "d.jsonl"],
        output_dir=scratch,
        storage_dir=f"{s3_root}/runs/{run_id}",
    )


def writer(scratch: Path, url: str) -> EventWriter:
    mirror = EventMirror(scratch / "events.jsonl", url)
    scratch.mkdir(parents=True, exist_ok=True)
    mirror.pull()
    return EventWriter(scratch / "events.jsonl", stream=None, mirror=mirror)


def test_a_checkpoint_event_is_in_the_store_when_emit_returns(s3_root: str, tmp_path: Path) -> None:
    url = f"{s3_root}/runs/r1/events.jsonl"
    events = writer(tmp_path / "scratch", url)
    try:
        events.emit("checkpoint", {"step": 5, "path": f"{s3_root}/runs/r1/checkpoints/step-5"})
        assert stored_events(url)[-1]["type"] == "checkpoint"
    finally:
        events.close()


def test_closing_the_log_puts_every_event_in_the_store(s3_root: str, tmp_path: Path) -> None:
    url = f"{s3_root}/runs/r2/events.jsonl"
    with writer(tmp_path / "scratch", url) as events:
        for step in range(1, 30):
            events.emit("progress", {"step": step})
    assert [e["seq"] for e in stored_events(url)] == list(range(1, 30))


def test_a_trainer_on_another_node_continues_the_stores_log(s3_root: str, tmp_path: Path) -> None:
    url = f"{s3_root}/runs/r3/events.jsonl"
    with writer(tmp_path / "node-a", url) as events:
        events.status("running")
        events.status("stopped")
    with writer(tmp_path / "node-b", url) as events:  # a fresh scratch folder: only the store has the log
        events.status("running")
    assert [(e["seq"], e["payload"]) for e in stored_events(url)] == [
        (1, {"state": "running"}),
        (2, {"state": "stopped"}),
        (3, {"state": "running"}),
    ]


def test_inputs_are_fetched_to_where_the_spec_expects_them(s3_root: str, tmp_path: Path) -> None:
    storage.write_bytes(f"{s3_root}/files/abc.jsonl", b'{"text": "x"}\n')
    storage.write_bytes(f"{s3_root}/models/base/config.json", b"{}")
    model = tmp_path / "cache" / "models" / storage.cache_name(f"{s3_root}/models/base")
    data = tmp_path / "scratch" / "data" / "abc.jsonl"
    spec = RunSpec(
        run_id="r4",
        model_path=model,
        train_files=[data],
        output_dir=tmp_path / "scratch",
        storage_dir=f"{s3_root}/runs/r4",
        fetch=[
            Fetch(url=f"{s3_root}/models/base", dest=model, kind="dir", cached=True),
            Fetch(url=f"{s3_root}/files/abc.jsonl", dest=data, kind="file"),
        ],
    )
    said: list[str] = []
    fetch_inputs(spec, said.append)
    assert (model / "config.json").read_bytes() == b"{}"
    assert data.read_bytes() == b'{"text": "x"}\n'
    assert len(said) == 2


def test_a_checkpoint_is_named_by_its_place_under_the_runs_folder(s3_root: str, tmp_path: Path) -> None:
    spec = stored_run(s3_root, tmp_path, "r5", scratch=tmp_path / "scratch")
    ckpt = tmp_path / "scratch" / "checkpoints" / "step-3"
    ckpt.mkdir(parents=True)
    (ckpt / "optimizer.pt").write_bytes(b"o")
    (ckpt / "trainer_state.json").write_text("{}")
    sync = StoreSync(spec)
    url = sync.publish_checkpoint(ckpt, last="trainer_state.json")
    assert url == f"{s3_root}/runs/r5/checkpoints/step-3"
    assert storage.read_bytes(f"{url}/optimizer.pt") == b"o"
    assert sync.delete(ckpt) == url and not storage.has_objects(url)


def test_shards_another_rank_uploaded_first_stay_when_rank_0_publishes_the_rest(
    s3_root: str, tmp_path: Path
) -> None:
    spec = stored_run(s3_root, tmp_path, "r6", scratch=tmp_path / "node-a")
    url = f"{s3_root}/runs/r6/checkpoints/step-3"
    storage.write_bytes(f"{url}/dcp/__7_0.distcp", b"stale")  # an abandoned attempt's
    sync = StoreSync(spec)
    final = tmp_path / "node-a" / "checkpoints" / "step-3"
    sync.clear(final)  # rank 0, before any rank uploads
    # Rank 1 writes step-3.tmp under the same path on its own disk (node B) and uploads its files.
    theirs = tmp_path / "node-b" / "checkpoints" / "step-3.tmp"
    (theirs / "dcp").mkdir(parents=True)
    (theirs / "dcp" / "__1_0.distcp").write_bytes(b"s1")
    (theirs / "rng-1.pt").write_bytes(b"r1")
    mine = [theirs / "dcp" / "__1_0.distcp", theirs / "rng-1.pt"]
    assert sync.publish_rank_files(theirs, final, mine) == url
    (final / "dcp").mkdir(parents=True)
    (final / "dcp" / "__0_0.distcp").write_bytes(b"s0")
    (final / "trainer_state.json").write_text("{}")
    assert sync.publish_checkpoint(final, last="trainer_state.json", replace=False) == url
    for name, data in [("dcp/__0_0.distcp", b"s0"), ("dcp/__1_0.distcp", b"s1"), ("rng-1.pt", b"r1")]:
        assert storage.read_bytes(f"{url}/{name}") == data
    assert not storage.exists(f"{url}/dcp/__7_0.distcp")
