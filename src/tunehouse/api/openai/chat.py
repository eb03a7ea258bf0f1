"""OpenAI chat completions over deployed models: a model not yet deployed is deployed on first use."""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.json_body import json_object
from tunehouse.api.openai.auth import Caller, openai_caller
from tunehouse.api.openai.errors import OpenAIError, OpenAIRoute
from tunehouse.api.openai.models import resolve_target
from tunehouse.api.serving import gather, supervisor_of
from tunehouse.core import deployments as dep_svc
from tunehouse.core.deployments import DeploymentStatus
from tunehouse.serving.engine import ChoiceEnd, Delta, EngineError, GenerationParams, Usage
from tunehouse.serving.supervisor import Supervisor
from tunehouse.store.models import Deployment

router = APIRouter(prefix="/v1", route_class=OpenAIRoute)

ROLES = {"system", "developer", "user", "assistant", "tool"}
MAX_N = 8


def _number(body: dict[str, Any], field: str, lo: float, hi: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise OpenAIError(400, f"'{field}' must be a number.", param=field, code="invalid_type")
    if not lo <= value <= hi:
        raise OpenAIError(400, f"'{field}' must be between {lo:g} and {hi:g}, got {value}.", param=field)
    return float(value)


def _integer(body: dict[str, Any], field: str, lo: int, hi: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise OpenAIError(400, f"'{field}' must be an integer.", param=field, code="invalid_type")
    if not lo <= value <= hi:
        raise OpenAIError(400, f"'{field}' must be between {lo} and {hi}, got {value}.", param=field)
    return value


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise OpenAIError(400, "'messages' must be a non-empty array.", param="messages")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise OpenAIError(
                400,
                f"messages[{i}].role must be one of {', '.join(sorted(ROLES))}.",
                param=f"messages[{i}].role",
            )
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise OpenAIError(
                    400,
                    f"messages[{i}].content: only text parts are supported.",
                    param=f"messages[{i}].content",
                )
        elif content is not None and not isinstance(content, str):
            raise OpenAIError(
                400,
                f"messages[{i}].content must be a string or an array of parts.",
                param=f"messages[{i}].content",
            )
        out.append({"role": m["role"], "content": content})
    return out


def parse_params(body: dict[str, Any]) -> GenerationParams:
    max_tokens = _integer(body, "max_completion_tokens", 1, 1 << 20)
    if max_tokens is None:
        max_tokens = _integer(body, "max_tokens", 1, 1 << 20)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (
        not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(x, str) for x in stop)
    ):
        raise OpenAIError(400, "'stop' must be a string or an array of up to 4 strings.", param="stop")
    seed = _integer(body, "seed", -(2**63), 2**63 - 1)
    return GenerationParams(
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 0, 2),
        top_p=_number(body, "top_p", 0, 1),
        stop=list(stop or []),
        seed=None if seed is None else seed % (2**32),
        n=_integer(body, "n", 1, MAX_N) or 1,
    )


def _engine_failed(exc: EngineError) -> OpenAIError:
    return OpenAIError(
        500, f"The model could not be served: {exc}", type_="server_error", code="engine_failed"
    )


def _usage(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion request in OpenAI's shape, checked (shared by every OpenAI-shaped route)."""

    model: str
    messages: list[dict[str, Any]]
    params: GenerationParams
    stream: bool
    include_usage: bool


def parse_chat(body: dict[str, Any] | None) -> ChatRequest:
    if body is None:
        raise OpenAIError(400, "The body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise OpenAIError(400, "'model' is required.", param="model")
    messages = _messages(body)
    params = parse_params(body)
    stream = body.get("stream") is True
    opts = body.get("stream_options")
    include_usage = stream and isinstance(opts, dict) and opts.get("include_usage") is True
    return ChatRequest(model, messages, params, stream, include_usage)


def undeploying(model: str) -> OpenAIError:
    return OpenAIError(503, f"The model '{model}' is being undeployed; try again.", type_="server_error")


def openai_deployment(s: Session, caller: Caller, model: str) -> Deployment:
    """OpenAI has no deploy step: a base model, fine-tuned model or checkpoint is deployed on first use."""
    return dep_svc.deployment_for_model(s, caller.account_id, resolve_target(s, caller, model))


@router.post("/chat/completions")
async def chat_completions(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(openai_caller)
) -> Response:
    return await answer_chat(request, ctx, caller, openai_deployment)


async def answer_chat(
    request: Request,
    ctx: AppContext,
    caller: Caller,
    find: Callable[[Session, Caller, str], Deployment],
) -> Response:
    """A chat completion in OpenAI's shape from the deployment `find` names for the body's model (raising
    an OpenAIError when there is none); OpenAI's own route and DashScope's compatible mode both answer so."""
    chat = parse_chat(await json_object(request))

    def deployment() -> str:
        with ctx.db.session() as s:
            dep = find(s, caller, chat.model)
            if dep.status == DeploymentStatus.DELETING:
                raise undeploying(chat.model)
            return dep.key

    key = await run_in_threadpool(deployment)
    return await complete(supervisor_of(request), key, chat)


async def complete(supervisor: Supervisor, key: str, chat: ChatRequest) -> Response:
    """The deployment's answer as a chat.completion, or its chunks as SSE when the request streams."""
    try:
        await supervisor.ensure(key)  # the first call waits for the engine to load
    except EngineError as exc:
        raise _engine_failed(exc) from None
    model, params = chat.model, chat.params
    cid = "chatcmpl-" + secrets.token_hex(12)
    created = int(time.time())
    events = supervisor.generate(key, chat.messages, params)
    if chat.stream:
        return StreamingResponse(
            _sse(events, cid, created, model, params.n, chat.include_usage),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    try:
        answer = await gather(events, params.n)
    except EngineError as exc:
        raise _engine_failed(exc) from None
    return JSONResponse(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": answer.texts[i], "refusal": None},
                    "finish_reason": answer.finish_reasons[i],
                    "logprobs": None,
                }
                for i in range(params.n)
            ],
            "usage": _usage(answer.usage),
        }
    )


async def _sse(
    events: AsyncIterator[Any], cid: str, created: int, model: str, n: int, include_usage: bool
) -> AsyncIterator[bytes]:
    def frame(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

    def chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
        obj: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        }
        if include_usage:
            obj["usage"] = usage
        return frame(obj)

    for i in range(n):  # the first delta of each choice carries the role
        yield chunk(
            [
                {
                    "index": i,
                    "delta": {"role": "assistant", "content": ""},
                    "finish_reason": None,
                    "logprobs": None,
                }
            ]
        )
    try:
        async for ev in events:
            if isinstance(ev, Delta):
                if ev.text:
                    yield chunk(
                        [
                            {
                                "index": ev.index,
                                "delta": {"content": ev.text},
                                "finish_reason": None,
                                "logprobs": None,
                            }
                        ]
                    )
            elif isinstance(ev, ChoiceEnd):
                yield chunk(
                    [{"index": ev.index, "delta": {}, "finish_reason": ev.finish_reason, "logprobs": None}]
                )
            elif include_usage:
                yield chunk([], _usage(ev))
    except EngineError as exc:
        # The 200 has gone out: the SDK raises APIError on an error frame.
        yield frame(
            {
                "error": {
                    "message": f"The model could not be served: {exc}",
                    "type": "server_error",
                    "param": None,
                    "code": "engine_failed",
                }
            }
        )
        return
    yield b"data: [DONE]\n\n"
