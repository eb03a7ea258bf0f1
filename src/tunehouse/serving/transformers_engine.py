"""The transformers + PEFT engine, from the server's side: a worker process reached on a unix socket.

One worker holds one base model; each LoRA deployment of that base is a named adapter in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tunehouse.serving.engine import (
    BaseSpec,
    ChoiceEnd,
    Delta,
    EngineError,
    GenerationEvent,
    GenerationParams,
    Usage,
)
from tunehouse.serving.engine_process import EngineProcess

WORKER_MODULE = "tunehouse.serving.worker"
# A loaded base model on a busy CPU can take a while; the caller's first request waits for it.
START_TIMEOUT_S = float(os.environ.get("TUNEHOUSE_ENGINE_START_TIMEOUT_S", "600"))


class TransformersEngine(EngineProcess):
    name = "transformers"

    def __init__(self) -> None:
        super().__init__()
        self.socket_path: str | None = None
        self.log_path: Path | None = None

    async def start(self, base: BaseSpec, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        # Unix socket paths are short (108 bytes): keep it in a short directory of its own.
        sock_dir = Path(os.environ.get("TMPDIR", "/tmp")) / f"th-{os.getuid()}"
        sock_dir.mkdir(mode=0o700, exist_ok=True)
        self.socket_path = str(sock_dir / f"{workdir.name}-{os.getpid()}.sock")
        spec_path = workdir / "engine.json"
        spec_path.write_text(
            json.dumps(
                {
                    "socket": self.socket_path,
                    "base_model": base.base_model,
                    "base_path": base.base_path,
                    "full_weights": base.full_weights,
                    "threads": int(os.environ.get("TUNEHOUSE_ENGINE_THREADS", "1")),
                }
            ),
            encoding="utf-8",
        )
        self.log_path = workdir / "engine.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the worker process owns it
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                WORKER_MODULE,
                str(spec_path),
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                start_new_session=True,
            )
        finally:
            log.close()
        assert self.proc.stdout is not None
        try:
            line = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            await self.stop()
            raise EngineError(f"the engine did not load the model within {START_TIMEOUT_S:.0f} s") from None
        if line.strip() != b"ready":
            code = await self.proc.wait()
            raise EngineError(self._describe_exit(code))

    def _describe_exit(self, code: int | None) -> str:
        tail = ""
        if self.log_path is not None and self.log_path.exists():
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            tail = lines[-1] if lines else ""
        reason = f"the engine process exited with code {code}"
        return f"{reason}: {tail}" if tail else reason

    async def _open(
        self, request: dict[str, Any]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.socket_path is None or self.exit_reason() is not None:
            raise EngineError(self.exit_reason() or "the engine is not started")
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=2**24)
        except OSError as exc:
            raise EngineError(f"the engine is unreachable: {exc}") from exc
        writer.write((json.dumps(request) + "\n").encode())
        await writer.drain()
        return reader, writer

    async def _next(self, reader: asyncio.StreamReader) -> dict[str, Any]:
        line = await reader.readline()
        if not line:
            raise EngineError(self.exit_reason() or "the engine closed the connection mid-answer")
        msg: dict[str, Any] = json.loads(line)
        if msg.get("type") == "error":
            raise EngineError(str(msg.get("message")))
        return msg

    async def _control(self, request: dict[str, Any]) -> None:
        reader, writer = await self._open(request)
        try:
            await self._next(reader)
        finally:
            writer.close()

    async def load_adapter(self, name: str, path: str) -> None:
        await self._control({"op": "load_adapter", "name": name, "path": path})

    async def unload_adapter(self, name: str) -> None:
        await self._control({"op": "unload_adapter", "name": name})

    async def generate(
        self, adapter: str | None, messages: list[dict[str, Any]], params: GenerationParams
    ) -> AsyncIterator[GenerationEvent]:
        request = {"op": "generate", "adapter": adapter, "messages": messages, "params": params.to_json()}
        reader, writer = await self._open(request)
        try:
            while True:
                msg = await self._next(reader)
                kind = msg.get("type")
                if kind == "delta":
                    yield Delta(int(msg["index"]), str(msg["text"]))
                elif kind == "choice_end":
                    yield ChoiceEnd(
                        int(msg["index"]), str(msg["finish_reason"]), int(msg["completion_tokens"])
                    )
                elif kind == "usage":
                    yield Usage(int(msg["prompt_tokens"]), int(msg["completion_tokens"]))
                    return
        finally:
            writer.close()




    async def stop(self) -> None:
        await self._stop_process()
        if self.socket_path and os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
