"""Uploads stream to storage (the server's memory stays flat), and over-limit bodies are refused before
they are taken in: from Content-Length at once, or the moment a body without one crosses the limit."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import LiveServer, kill_trainers, start_server

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Callable[[], str]
) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("uploads"), "sqlite", tiny_model, make_pg_database)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def api_key(server: LiveServer) -> str:
    return server.keys("uploader")["api_key"]


def big_dataset(path: Path, size: int) -> Path:
    """A valid chat dataset of about `size` bytes, in long lines (fast to write and to validate)."""
    line = (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "Summarise: " + "lorem ipsum " * 800},
                    {"role": "assistant", "content": "Lorem."},
                ]
            }
        )
        + "\n"
    ).encode()
    with open(path, "wb") as f:
        for _ in range(size // len(line) + 1):
            f.write(line)
    return path


class PeakRss:
    """Samples a process's resident memory on a thread until stopped; keeps the highest value."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.mark.parametrize(("path", "field"), [("/v1/files", "file"), ("/api/v1/files", "files")])
def test_a_280_mb_upload_leaves_the_server_memory_flat(
    server: LiveServer, api_key: str, tmp_path: Path, path: str, field: str
) -> None:
    data = big_dataset(tmp_path / "big.jsonl", 280 * MiB)  # under DashScope's 300 MB
    headers = {"Authorization": f"Bearer {api_key}"}
    assert server.proc is not None
    # Warm: the first upload imports and allocates what every later one reuses.
    httpx.post(server.url + path, headers=headers, files={field: ("warm.jsonl", data.read_bytes()[:20_000])})
    before = psutil.Process(server.proc.pid).memory_info().rss
    with PeakRss(server.proc.pid) as rss, open(data, "rb") as f:
        r = httpx.post(
            server.url + path,
            headers=headers,
            files={field: ("big.jsonl", f)},
            data={"purpose": "fine-tune"},
            timeout=600,
        )
    assert r.status_code == 200, r.text[:500]
    grown = rss.peak - before
    assert grown < 64 * MiB, (
        f"the server grew by {grown / MiB:.0f} MiB for a {data.stat().st_size / MiB:.0f} MiB upload"
    )


def raw_request(server: LiveServer, head: str, body_chunks: Iterator[bytes] | None = None) -> bytes:
    """Sends a request over a plain socket (so nothing is buffered or fixed up) and reads the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head.encode())
        try:
            for chunk in body_chunks or ():
                sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body went out: the point
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + 40:
            got = sock.recv(65536)
            if not got:
                break
            answer += got
        return answer


def test_an_upload_declared_over_the_limit_is_refused_before_its_body(
    server: LiveServer, api_key: str
) -> None:
    head = (
        "POST /v1/files HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        "Content-Type: multipart/form-data; boundary=xyz\r\n"
        f"Content-Length: {10 * 1024 * MiB}\r\n\r\n"
    )
    answer = raw_request(server, head)  # not one byte of the 10 GiB is sent
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"type":"invalid_request_error"' in answer and b"request_too_large" in answer


def test_a_chunked_body_is_refused_once_it_crosses_the_limit(server: LiveServer, api_key: str) -> None:
    head = (
        "POST /api/v1/fine-tunes HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * MiB

    def chunks() -> Iterator[bytes]:
        for _ in range(64):  # 64 MiB offered; the JSON body limit is 8 MiB
            yield f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        yield b"0\r\n\r\n"

    answer = raw_request(server, head, chunks())
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"code":"RequestTooLarge"' in answer
