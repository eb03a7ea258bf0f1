"""DashScope text generation (`Generation.call`, the 2.x `Client().chat.completions`) over deployments.

`model` is a deployment's `deployed_model`, or a base model (deployed on first use, as OpenAI's are).
Streaming is asked for by the `X-DashScope-SSE: enable` header, not by the body.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.dashscope.auth import Caller, ds_caller
from tunehouse.api.dashscope.errors import ApiError, DashScopeRoute, invalid
from tunehouse.api.dashscope.routes import _json_body
from tunehouse.api.envelopes import request_id
from tunehouse.api.limits import echo
from tunehouse.api.serving import gather, supervisor_of
from tunehouse.core import deployments as dep_svc
from tunehouse.core.deployments import DeploymentStatus
from tunehouse.serving.engine import ChoiceEnd, Delta, EngineError, GenerationEvent, GenerationParams, Usage

router = APIRouter(prefix="/api/v1", route_class=DashScopeRoute)

PATH = "/services/aigc/text-generation/generation"
ROLES = {"system", "user", "assistant", "tool"}
RESULT_FORMATS = ("text", "message")
MAX_N = 4  # the hosted service's bound
# Served: the engine is loaded or being loaded (the call waits for it), or was stopped with the server
# (the call starts it again). A FAILED one is refused with its reason until it is deployed again.
SERVABLE = {
    DeploymentStatus.PENDING,
    DeploymentStatus.DEPLOYING,
    DeploymentStatus.RUNNING,
    DeploymentStatus.STOPPED,
}


@dataclass(frozen=True)
class Ask:
    model: str
    messages: list[dict[str, Any]]
    params: GenerationParams
    result_format: str
    incremental: bool


def _content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)  # multimodal-style [{"text": …}] parts, text only
    raise invalid(f"{where}.content must be a string")


def _messages(inp: dict[str, Any]) -> list[dict[str, Any]]:
    raw = inp.get("messages")
    prompt = inp.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise invalid("input.prompt must be a string")
    out: list[dict[str, Any]] = []
    if raw is not None:
        if not isinstance(raw, list):
            raise invalid("input.messages must be an array")
        for i, m in enumerate(raw):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise invalid(f"input.messages[{i}].role must be one of {', '.join(sorted(ROLES))}")
            out.append({"role": m["role"], "content": _content(m.get("content"), f"input.messages[{i}]")})
    if prompt:
        out.append({"role": "user", "content": prompt})
    if not out:
        raise invalid("Input should contain input.messages or input.prompt")
    return out


def _number(params: dict[str, Any], field: str, lo: float, hi: float) -> float | None:
    value = params.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise invalid(f"parameters.{field} must be a number")
    if not lo <= value <= hi:
        raise invalid(f"parameters.{field} must be within [{lo:g}, {hi:g}], got {value}")
    return float(value)


def _integer(params: dict[str, Any], field: str, lo: int, hi: int) -> int | None:
    value = params.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"parameters.{field} must be an integer")
    if not lo <= value <= hi:
        raise invalid(f"parameters.{field} must be within [{lo}, {hi}], got {value}")
    return value


def parse(body: dict[str, Any]) -> Ask:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("Model not specified")
    inp = body.get("input")
    if not isinstance(inp, dict):
        raise invalid("input must be an object")
    messages = _messages(inp)
    params = body.get("parameters")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise invalid("parameters must be an object")
    result_format = params.get("result_format")
    if result_format is None:
        result_format = "text"
    if result_format not in RESULT_FORMATS:
        raise invalid(f"parameters.result_format must be text or message, got {echo(result_format)}")
    incremental = params.get("incremental_output")
    if incremental is not None and not isinstance(incremental, bool):
        raise invalid("parameters.incremental_output must be a boolean")
    stop = params.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and (not isinstance(stop, list) or not all(isinstance(x, str) for x in stop)):
        raise invalid("parameters.stop must be a string or an array of strings")
    n = _integer(params, "n", 1, MAX_N) or 1
    if n > 1 and result_format == "text":
        raise invalid("parameters.n above 1 needs result_format message")
    seed = _integer(params, "seed", 0, 2**64 - 1)
    gen = GenerationParams(
        max_tokens=_integer(params, "max_tokens", 1, 1 << 20),
        temperature=_number(params, "temperature", 0, 2),
        top_p=_number(params, "top_p", 0, 1),
        stop=list(stop or []),
        seed=None if seed is None else seed % (2**32),
        n=n,
    )
    return Ask(model, messages, gen, result_format, bool(incremental))


def _deployment_key(s: Session, caller: Caller, model: str) -> str:
    dep = dep_svc.find_deployment(s, caller.account_id, model)
    if dep is None:
        target = dep_svc.resolve_model_target(s, caller.account_id, model)
        if target is None:  # another account's deployments and models are not found either
            raise ApiError(404, "NotFound", f"Model not exist: {echo(model)}")
        if target.weights_kind != "base":
            raise invalid(f"Model {echo(model)} is not deployed: deploy it first (Deployments.call)")
        dep = dep_svc.deployment_for_model(s, caller.account_id, target)
    if dep.status not in SERVABLE:
        reason = f": {dep.error}" if dep.status == DeploymentStatus.FAILED and dep.error else ""
        raise invalid(f"Model {echo(model)} is {dep.status}, not running{reason}")
    return dep.key


def _engine_failed(exc: EngineError) -> ApiError:
    return ApiError(500, "InternalError", f"The model could not be served: {exc}")


def _usage(u: Usage) -> dict[str, int]:
    return {
        "input_tokens": u.prompt_tokens,
        "output_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _output(ask: Ask, texts: dict[int, str], reasons: dict[int, str]) -> dict[str, Any]:
    """`output` for the choices given: text format holds choice 0 alone."""
    if ask.result_format == "text":
        return {"text": texts.get(0, ""), "finish_reason": reasons.get(0, "null")}
    choices = []
    for i in sorted(texts):
        choice: dict[str, Any] = {
            "finish_reason": reasons.get(i, "null"),
            "message": {"role": "assistant", "content": texts[i]},
        }
        if ask.params.n > 1:
            choice["index"] = i
        choices.append(choice)
    return {"choices": choices}


@router.post(PATH)
async def generation(
    request: Request, ctx: AppContext = Depends(get_ctx), caller: Caller = Depends(ds_caller)
) -> Response:
    ask = parse(await _json_body(request))
    key = await run_in_threadpool(_key_for, ctx, caller, ask.model)
    supervisor = supervisor_of(request)
    try:
        await supervisor.ensure(key)  # the first call waits for the engine to load
    except EngineError as exc:
        raise _engine_failed(exc) from None
    events = supervisor.generate(key, ask.messages, ask.params)
    if request.headers.get("x-dashscope-sse", "").strip().lower() == "enable":
        rid = request_id()
        return StreamingResponse(
            _frames(events, ask, rid),
            media_type="text/event-stream",
            headers={"X-Request-Id": rid, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        answer = await gather(events, ask.params.n)
    except EngineError as exc:
        raise _engine_failed(exc) from None
    output = _output(ask, dict(enumerate(answer.texts)), dict(enumerate(answer.finish_reasons)))
    rid = request_id()
    return JSONResponse(
        {"request_id": rid, "output": output, "usage": _usage(answer.usage)}, headers={"X-Request-Id": rid}
    )


def _key_for(ctx: AppContext, caller: Caller, model: str) -> str:
    with ctx.db.session() as s:
        return _deployment_key(s, caller, model)


async def _frames(events: AsyncIterator[GenerationEvent], ask: Ask, rid: str) -> AsyncIterator[bytes]:
    """SSE as the SDK's `_handle_stream` reads it: `id`, `event:result`, a status comment, one `data` line.
    No done marker: the frame with a real finish_reason (and the usage) is the last."""
    seq = 0

    def frame(payload: dict[str, Any], event: str = "result", status: int = 200) -> bytes:
        nonlocal seq
        seq += 1
        extra = f"status:{status}\n" if event == "error" else ""
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        return f"id:{seq}\nevent:{event}\n:HTTP_STATUS/{status}\n{extra}data:{data}\n\n".encode()

    sofar: dict[int, str] = {}
    ended: dict[int, str] = {}
    try:
        async for ev in events:
            if isinstance(ev, Delta):
                if not ev.text:
                    continue
                sofar[ev.index] = sofar.get(ev.index, "") + ev.text
                shown = ev.text if ask.incremental else sofar[ev.index]
                yield frame({"request_id": rid, "output": _output(ask, {ev.index: shown}, {})})
            elif isinstance(ev, ChoiceEnd):
                ended[ev.index] = ev.finish_reason  # sent with the usage, which comes last
            else:
                for i in sorted(ended) or [0]:
                    shown = "" if ask.incremental else sofar.get(i, "")
                    out = _output(ask, {i: shown}, {i: ended.get(i, "stop")})
                    yield frame({"request_id": rid, "output": out, "usage": _usage(ev)})
    except EngineError as exc:
        # The 200 has gone out: an error event makes the SDK answer this status and code instead.
        err = {"request_id": rid, "code": "InternalError", "message": f"The model could not be served: {exc}"}
        yield frame(err, event="error", status=500)
