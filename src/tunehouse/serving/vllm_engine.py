"""The vLLM engine: a `vllm.entrypoints.openai.api_server` subprocess per base model (or full fine-tune).

The server listens on 127.0.0.1 on a free port with an API key of its own, so only Tunehouse (which
authenticates callers) reaches it. LoRA adapters are loaded and unloaded at run time
(`VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`, `/v1/load_lora_adapter`, `/v1/unload_lora_adapter`); a request
names its adapter as the `model`. Readiness is `/health` answering 200 before a deadline. vLLM runs under
the interpreter `TUNEHOUSE_VLLM_PYTHON` names (default: the server's); this module never imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shlex
import socket
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx

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

# vLLM loads, profiles and warms up before /health answers: minutes on a CPU.
START_TIMEOUT_S = float(os.environ.get("TUNEHOUSE_ENGINE_START_TIMEOUT_S", "600"))
BASE_NAME = "base"  # the served name of the loaded model itself; adapters are served by their own names
DEFAULT_MAX_TOKENS = 256  # as the transformers engine
# Same ChatML the trainer gives a tokenizer without a template (tunehouse.trainer.chat_template), which the
# server may not import.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def vllm_python(env: Mapping[str, str] = os.environ) -> str:
    return env.get("TUNEHOUSE_VLLM_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    config = model_dir / "tokenizer_config.json"
    if not config.is_file():
        return False
    try:
        return bool(json.loads(config.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError):
        return False


def server_command(
    python: str,
    base: BaseSpec,
    port: int,
    api_key: str,
    chat_template: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> list[str]:
    """The command line of one vLLM OpenAI server for `base`. A full fine-tune takes no adapters; a base
    does, up to TUNEHOUSE_VLLM_MAX_LORAS at once of rank up to TUNEHOUSE_VLLM_MAX_LORA_RANK.
    TUNEHOUSE_VLLM_ARGS adds flags (e.g. `--gpu-memory-utilization 0.5 --max-model-len 4096`)."""
    source = Path(base.source)
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(source),
        "--served-model-name",
        BASE_NAME,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--api-key",
        api_key,
        "--seed",
        "0",
    ]
    if not (source / "tokenizer_config.json").is_file():  # full weights saved without their tokenizer
        cmd += ["--tokenizer", base.base_path]
    if chat_template is not None:
        cmd += ["--chat-template", str(chat_template)]
    if base.full_weights is None:
        cmd += [
            "--enable-lora",
            "--max-loras",
            env.get("TUNEHOUSE_VLLM_MAX_LORAS", "8"),
            "--max-lora-rank",
            env.get("TUNEHOUSE_VLLM_MAX_LORA_RANK", "64"),
        ]
    cmd += shlex.split(env.get("TUNEHOUSE_VLLM_ARGS", ""))
    return cmd


def server_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    out = dict(env)
    out["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    out.setdefault("VLLM_NO_USAGE_STATS", "1")  # no network from here
    out.setdefault("DO_NOT_TRACK", "1")
    out.setdefault("HF_HUB_OFFLINE", "1")
    return out


async def wait_healthy(
    url: str, deadline_s: float, alive: Any = None, interval_s: float = 0.5
) -> None:
    """Returns once GET {url}/health answers 200; EngineError when `alive()` turns False (the process
    ended: its reason) or the deadline passes first."""
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    async with httpx.AsyncClient(timeout=10) as client:
        while True:
            if alive is not None:
                reason = alive()
                if reason is not None:
                    raise EngineError(reason)
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{url}/health")).status_code == 200:
                    return
            if loop.time() >= until:
                raise EngineError(f"the vLLM server was not healthy within {deadline_s:.0f} s")
            await asyncio.sleep(interval_s)


def request_body(model: str, messages: list[dict[str, Any]], params: GenerationParams) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
        "temperature": 1.0 if params.temperature is None else params.temperature,
        "n": params.n,
    }
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.stop:
        body["stop"] = params.stop
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def events_of_chunk(chunk: dict[str, Any], counts: dict[int, int], n: int) -> list[GenerationEvent]:
    """One streamed `chat.completion.chunk` of vLLM's as engine events. vLLM streams a token per chunk:
    the chunks of a choice count its tokens (the final usage has the exact total)."""
    if "error" in chunk:
        err = chunk["error"]
        raise EngineError(str(err.get("message") if isinstance(err, dict) else err))
    out: list[GenerationEvent] = []
    for choice in chunk.get("choices") or []:
        index = int(choice.get("index", 0))
        text = (choice.get("delta") or {}).get("content") or ""
        if text:
            counts[index] = counts.get(index, 0) + 1
            out.append(Delta(index, text))
        reason = choice.get("finish_reason")
        if reason:
            out.append(ChoiceEnd(index, "length" if reason == "length" else "stop", counts.get(index, 0)))
    usage = chunk.get("usage")
    if usage and not chunk.get("choices"):
        out.append(Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)))
    return out


class VllmEngine(EngineProcess):
    STOP_GRACE_S = 30.0  # a vLLM server frees its KV cache and workers on the way out
    name = "vllm"

    def __init__(self) -> None:
        super().__init__()
        self.url: str | None = None
        self.api_key = secrets.token_urlsafe(24)
        self.log_path: Path | None = None
        self.adapters: dict[str, str] = {}  # name -> path, as loaded in this server

    async def start(self, base: BaseSpec, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        template = None
        if not has_chat_template(Path(base.source)) and not has_chat_template(Path(base.base_path)):
            template = workdir / "chat_template.jinja"
            template.write_text(CHATML_TEMPLATE, encoding="utf-8")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        cmd = server_command(vllm_python(), base, port, self.api_key, template)
        self.log_path = workdir / "engine.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the vLLM process owns it
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=server_env(),
                start_new_session=True,  # its workers die with its process group
            )
        except OSError as exc:
            raise EngineError(f"vLLM could not be started ({cmd[0]}): {exc}") from exc
        finally:
            log.close()
        try:
            await wait_healthy(self.url, START_TIMEOUT_S, self.exit_reason)
        except EngineError:
            reason = self.exit_reason()
            await self.stop()
            if reason is None:
                raise
            raise EngineError(reason) from None

    def _headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.api_key}"}

    def _check(self) -> str:
        if self.url is None or self.exit_reason() is not None:
            raise EngineError(self.exit_reason() or "the engine is not started")
        return self.url

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        url = self._check()
        try:
            async with httpx.AsyncClient(timeout=600) as client:
                return await client.post(url + path, json=body, headers=self._headers())
        except httpx.HTTPError as exc:
            raise EngineError(self.exit_reason() or f"the vLLM server is unreachable: {exc}") from exc

    async def load_adapter(self, name: str, path: str) -> None:
        if self.adapters.get(name) == path:
            return
        r = await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": path})
        if r.status_code != 200 and "already been loaded" not in r.text:
            raise EngineError(f"vLLM refused the adapter ({r.status_code}): {r.text.strip()}")
        self.adapters[name] = path

    async def unload_adapter(self, name: str) -> None:
        if self.adapters.pop(name, None) is None:
            return
        r = await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        if r.status_code != 200:
            raise EngineError(f"vLLM did not unload the adapter ({r.status_code}): {r.text.strip()}")

    async def generate(
        self, adapter: str | None, messages: list[dict[str, Any]], params: GenerationParams
    ) -> AsyncIterator[GenerationEvent]:
        url = self._check()
        if adapter is not None and adapter not in self.adapters:
            raise EngineError(f"no adapter {adapter!r} is loaded")
        body = request_body(adapter or BASE_NAME, messages, params)
        counts: dict[int, int] = {}
        try:
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(600, connect=10)) as client,
                client.stream("POST", url + "/v1/chat/completions", json=body, headers=self._headers()) as r,
            ):
                if r.status_code != 200:
                    text = (await r.aread()).decode(errors="replace")
                    raise EngineError(f"vLLM answered {r.status_code}: {text.strip()}")
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        return
                    for event in events_of_chunk(json.loads(data), counts, params.n):
                        yield event
        except httpx.HTTPError as exc:
            raise EngineError(self.exit_reason() or f"the vLLM server failed mid-answer: {exc}") from exc

    def _describe_exit(self, code: int | None) -> str:
        tail = ""
        if self.log_path is not None and self.log_path.exists():
            lines = [ln for ln in self.log_path.read_text(errors="replace").splitlines() if ln.strip()]
            tail = lines[-1] if lines else ""
        reason = f"the vLLM server exited with code {code}"
        return f"{reason}: {tail}" if tail else reason




    async def stop(self) -> None:
        await self._stop_process()
        self.adapters.clear()
