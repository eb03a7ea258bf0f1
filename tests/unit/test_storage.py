"""The artifact store (tunehouse.storage) behaves the same on a local root and on a real S3 server."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from tests.s3server import SeaweedS3
from tunehouse import storage


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "root")
    return str(request.getfixturevalue("s3_root"))


def make_tree(base: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(data)
    return base


def test_an_uploaded_file_comes_back_byte_identical(root: str, tmp_path: Path) -> None:
    data = os.urandom(300_000) + b"\r\n\x00 trailing bytes, no newline"
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    loc = storage.join(root, "files", "blob.bin")
    storage.put_file(src, loc)
    assert storage.size(loc) == len(data)
    assert storage.read_bytes(loc) == data
    assert storage.get_file(loc, tmp_path / "out.bin").read_bytes() == data
    assert b"".join(storage.iter_bytes(loc, chunk=4096)) == data


def test_reading_from_an_offset_returns_only_the_rest(root: str) -> None:
    loc = storage.join(root, "runs", "r1", "events.jsonl")
    storage.write_bytes(loc, b"line one\nline two\n")
    assert storage.read_bytes(loc, 9) == b"line two\n"


def test_a_missing_location_has_no_size_and_no_objects(root: str) -> None:
    loc = storage.join(root, "nothing", "here.json")
    assert storage.size(loc) is None
    assert not storage.exists(loc)
    assert not storage.has_objects(storage.join(root, "nothing"))
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(loc)


def test_a_folder_uploads_whole_and_replaces_an_older_copy(root: str, tmp_path: Path) -> None:
    loc = storage.join(root, "runs", "r1", "checkpoints", "step-2")
    old = make_tree(tmp_path / "old", {"stale.bin": b"old", "trainer_state.json": b"{}"})
    storage.put_dir(old, loc, last="trainer_state.json")
    new = make_tree(tmp_path / "new", {"a/b.bin": b"B" * 1000, "trainer_state.json": b'{"step": 2}'})
    storage.put_dir(new, loc, last="trainer_state.json")
    back = storage.get_dir(loc, tmp_path / "back")
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()) == [
        "a/b.bin",
        "trainer_state.json",
    ]
    assert (back / "trainer_state.json").read_bytes() == b'{"step": 2}'


def test_listing_names_the_folders_directly_under_a_location(root: str, tmp_path: Path) -> None:
    ckpts = storage.join(root, "runs", "r2", "checkpoints")
    for step in (1, 3):
        storage.put_dir(make_tree(tmp_path / f"s{step}", {"x": b"1"}), storage.join(ckpts, f"step-{step}"))
    assert sorted(storage.basename(d) for d in storage.list_dirs(ckpts)) == ["step-1", "step-3"]


def test_removing_a_folder_leaves_no_objects_under_it(root: str, tmp_path: Path) -> None:
    loc = storage.join(root, "runs", "r3", "checkpoints", "step-1")
    storage.put_dir(make_tree(tmp_path / "t", {"a": b"1", "d/b": b"2"}), loc)
    storage.remove(loc)
    # An S3 prefix may go on listing as a folder for a moment; what matters is that nothing is stored.
    assert not storage.has_objects(loc)
    storage.remove(loc)  # removing what is gone is no error


@pytest.mark.s3
def test_a_large_upload_goes_in_parts_without_holding_the_file_in_memory(
    s3_root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # S3's smallest part, one in flight: a file of many parts without writing hundreds of MiB.
    monkeypatch.setattr(storage, "PART_BYTES", 5 << 20)
    monkeypatch.setattr(storage, "PART_CONCURRENCY", 1)
    size = 12 * storage.PART_BYTES
    src = tmp_path / "big.bin"
    digest = hashlib.sha256()
    with open(src, "wb") as fh:
        for _ in range(size // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            fh.write(chunk)
    loc = storage.join(s3_root, "files", "big.bin")
    tracemalloc.start()
    try:
        storage.put_file(src, loc)
        upload_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        out = storage.get_file(loc, tmp_path / "big.out")
        download_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest.hexdigest()
    # Memory follows the parts in flight (and the client's copies of them), not the file's size.
    assert upload_peak < size // 2, upload_peak
    assert download_peak < size // 2, download_peak


@pytest.mark.s3
def test_a_base_model_in_s3_is_fetched_once_per_node(s3_root: str, tmp_path: Path) -> None:
    loc = storage.join(s3_root, "models", "base")
    storage.put_dir(make_tree(tmp_path / "m", {"config.json": b"{}", "w.bin": b"v1"}), loc)
    cache = tmp_path / "cache"
    first = storage.cached_dir(loc, cache)
    assert (first / "w.bin").read_bytes() == b"v1"
    storage.write_bytes(storage.join(loc, "w.bin"), b"v2")  # registered models do not change; if one did,
    assert (storage.cached_dir(loc, cache) / "w.bin").read_bytes() == b"v1"  # the node keeps its copy
    assert storage.cached_dir(str(tmp_path / "m"), cache) == tmp_path / "m"  # a local model is used in place


def test_a_permanent_error_is_not_retried() -> None:
    calls = []

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("gone")

    with pytest.raises(FileNotFoundError):
        storage.retrying("reading", missing, budget_s=30)
    assert len(calls) == 1


def test_a_store_that_stays_down_fails_with_the_reason_after_the_budget() -> None:
    def down() -> None:
        raise ConnectionRefusedError("connection refused")

    with pytest.raises(storage.StorageError, match="connection refused"):
        storage.retrying("uploading x", down, budget_s=0.5)


class _Saw(logging.Handler):
    """Sets an event when the store's client logs that it is retrying."""

    def __init__(self) -> None:
        super().__init__()
        self.retrying = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "retrying" in record.getMessage():
            self.retrying.set()


@pytest.mark.s3
def test_a_write_waits_out_a_store_that_is_briefly_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = SeaweedS3(tmp_path / "seaweed")
    server.start()
    try:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        src = tmp_path / "ckpt.bin"
        src.write_bytes(os.urandom(100_000))
        loc = f"s3://artifacts/outage/{src.name}"
        server.stop()  # unreachable: connections are refused
        saw = _Saw()
        logging.getLogger("tunehouse.storage").addHandler(saw)
        result: list[object] = []
        writer = threading.Thread(target=lambda: result.append(storage.put_file(src, loc)))
        writer.start()
        try:
            assert saw.retrying.wait(60), "the write never saw the outage"
        finally:
            logging.getLogger("tunehouse.storage").removeHandler(saw)
            server.start()  # back on the same ports, with the same data
        writer.join(timeout=150)
        assert result == [loc]
        assert storage.read_bytes(loc) == src.read_bytes()
    finally:
        server.stop()


def test_removing_a_checkpoint_leaves_one_whose_name_it_prefixes(root: str) -> None:
    ckpts = storage.join(root, "runs", "r4", "checkpoints")
    for step in (1, 10):
        storage.write_bytes(storage.join(ckpts, f"step-{step}", "trainer_state.json"), b"{}")
    storage.remove(storage.join(ckpts, "step-1"))
    assert storage.has_objects(storage.join(ckpts, "step-10"))
    assert not storage.has_objects(storage.join(ckpts, "step-1"))
