"""The vLLM engine's own parts, without vLLM: its command line, engine selection, the health deadline against
a real HTTP server, the adapter bookkeeping it sends over HTTP, and a server process that dies at start."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tunehouse.serving import selection
from tunehouse.serving.engine import BaseSpec, ChoiceEnd, Delta, EngineError, GenerationParams, Usage
from tunehouse.serving.vllm_engine import (
    VllmEngine,
    events_of_chunk,
    request_body,
    server_command,
    server_env,
    wait_healthy,
)

BASE = BaseSpec("tunehouse-tiny", "/models/tiny")


def flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_a_base_is_served_on_loopback_with_runtime_lora_and_a_key_of_its_own() -> None:
    cmd = server_command("/venv/bin/python", BASE, 8123, "k3y", env={})
    assert cmd[:3] == ["/venv/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert flag(cmd, "--model") == "/models/tiny" and flag(cmd, "--host") == "127.0.0.1"
    assert flag(cmd, "--port") == "8123" and flag(cmd, "--api-key") == "k3y"
    assert "--enable-lora" in cmd and flag(cmd, "--max-loras") == "8"
    assert server_env({})["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"


def test_a_full_fine_tune_is_a_server_of_its_own_without_lora(tmp_path: Path) -> None:
    full = BaseSpec("tunehouse-tiny", "/models/tiny", str(tmp_path))  # weights saved without a tokenizer
    cmd = server_command("python", full, 8123, "k", env={"TUNEHOUSE_VLLM_ARGS": "--max-model-len 512"})
    assert flag(cmd, "--model") == str(tmp_path) and flag(cmd, "--tokenizer") == "/models/tiny"
    assert "--enable-lora" not in cmd and cmd[-2:] == ["--max-model-len", "512"]


def test_the_engine_is_chosen_explicitly_or_vllm_only_with_a_gpu_and_an_importable_vllm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An interpreter that finds a package named vllm: the probe only looks it up, it never imports it.
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise SystemExit('imported')\n")
    finds = tmp_path / "python-with-vllm"
    finds.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path} exec {sys.executable} "$@"\n')
    finds.chmod(0o755)
    with_vllm = {"TUNEHOUSE_VLLM_PYTHON": str(finds)}
    assert selection.choose_engine({"TUNEHOUSE_SERVING_ENGINE": "vllm"}) == "vllm"
    chosen = selection.choose_engine({**with_vllm, "TUNEHOUSE_SERVING_ENGINE": "transformers"})
    assert chosen == "transformers"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert selection.choose_engine(with_vllm) == "vllm"
    assert selection.choose_engine({"TUNEHOUSE_VLLM_PYTHON": sys.executable}) == "transformers"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")  # no GPU
    assert selection.choose_engine(with_vllm) == "transformers"
    with pytest.raises(ValueError, match="TUNEHOUSE_SERVING_ENGINE"):
        selection.choose_engine({"TUNEHOUSE_SERVING_ENGINE": "tgi"})


class _Recorder(BaseHTTPRequestHandler):
    """A real HTTP server: /health answers 503 until `healthy_after` calls, POSTs are recorded."""

    healthy_after = 0
    health_calls = 0
    posts: list[tuple[str, dict[str, Any], str]] = []

    def do_GET(self) -> None:
        type(self).health_calls += 1
        code = 200 if self.path == "/health" and self.health_calls > self.healthy_after else 503
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).posts.append((self.path, body, self.headers.get("authorization", "")))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http() -> Iterator[str]:
    _Recorder.healthy_after, _Recorder.health_calls, _Recorder.posts = 0, 0, []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_readiness_waits_for_health_to_answer_200(http: str) -> None:
    _Recorder.healthy_after = 3
    asyncio.run(wait_healthy(http, 120, interval_s=0.01))
    assert _Recorder.health_calls == 4


def test_readiness_gives_up_at_its_deadline_or_when_the_process_ends(http: str) -> None:
    _Recorder.healthy_after = 10**9
    with pytest.raises(EngineError, match="not healthy within"):
        asyncio.run(wait_healthy(http, 0.2, interval_s=0.01))
    with pytest.raises(EngineError, match="exited with code 1"):
        asyncio.run(wait_healthy(http, 120, alive=lambda: "the vLLM server exited with code 1"))


def test_adapters_are_loaded_once_and_unloaded_by_name_with_the_engines_key(http: str) -> None:
    engine = VllmEngine()
    engine.url = http

    async def scenario() -> None:
        await engine.load_adapter("dep1", "/runs/a/adapter")
        await engine.load_adapter("dep1", "/runs/a/adapter")  # already there: nothing sent
        await engine.unload_adapter("dep1")
        await engine.unload_adapter("dep1")  # gone: nothing sent

    asyncio.run(scenario())
    key = f"Bearer {engine.api_key}"
    assert _Recorder.posts == [
        ("/v1/load_lora_adapter", {"lora_name": "dep1", "lora_path": "/runs/a/adapter"}, key),
        ("/v1/unload_lora_adapter", {"lora_name": "dep1"}, key),
    ]


def test_a_server_that_dies_while_starting_fails_the_start_with_its_last_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TUNEHOUSE_VLLM_PYTHON", sys.executable)  # this interpreter has no vllm
    engine = VllmEngine()
    with pytest.raises(EngineError, match="exited with code 1: .*No module named"):
        asyncio.run(engine.start(BASE, tmp_path))
    assert engine.exit_reason() is not None


def test_requests_name_the_adapter_as_the_model_and_streamed_chunks_become_events() -> None:
    params = GenerationParams(max_tokens=4, temperature=0)
    body = request_body("dep1", [{"role": "user", "content": "hi"}], params)
    assert body["model"] == "dep1" and body["stream"] is True and body["temperature"] == 0
    assert body["stream_options"] == {"include_usage": True} and body["max_tokens"] == 4
    counts: dict[int, int] = {}
    chunks = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}},
    ]
    events = [e for c in chunks for e in events_of_chunk(c, counts, 1)]
    assert events == [Delta(0, "Hel"), Delta(0, "lo"), ChoiceEnd(0, "length", 2), Usage(5, 2)]
    with pytest.raises(EngineError, match="boom"):
        events_of_chunk({"error": {"message": "boom"}}, counts, 1)
