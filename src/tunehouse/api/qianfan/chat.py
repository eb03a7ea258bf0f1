"""Qianfan chat over deployed models: V1 `POST /rpc/2.0/ai_custom/v1/wenxinworkshop/chat/{endpoint}`
(BCE-signed; `result`, `sentence_id`/`is_end` frames), V2's OpenAI-shaped `POST /v2/chat/completions` with a
bearer token, and the token itself (`GET /v1/BCE-BEARER/token`).

An endpoint is one of the caller's services (its urlSuffix) or a base model's name; a base model is deployed
on first use, as OpenAI's chat does.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy.orm import Session

from tunehouse.api.context import AppContext, ctx_of
from tunehouse.api.envelopes import request_id
from tunehouse.api.json_body import json_object
from tunehouse.api.limits import echo
from tunehouse.api.openai import chat as openai_chat
from tunehouse.api.openai.errors import OpenAIError, OpenAIRoute
from tunehouse.api.qianfan import bearer
from tunehouse.api.qianfan.auth import bearer_account, qianfan_account
from tunehouse.api.qianfan.errors import qianfan_v1_error, qianfan_v2_error
from tunehouse.api.qianfan.services import CHAT_PATH
from tunehouse.core import credential_cache
from tunehouse.core import deployments as dep_svc
from tunehouse.core.deployments import DeploymentStatus
from tunehouse.core.errors import NotFound, QuotaExceeded
from tunehouse.serving.engine import ChoiceEnd, Delta, EngineError, GenerationParams, Usage

router = APIRouter()
v2_router = APIRouter(route_class=OpenAIRoute)  # V2 chat errors are {"error": {code, message}}

# Qianfan's own error codes (qianfan/consts.py APIErrorCode).
INTERNAL, INVALID_PARAM, NO_SUCH_API, TRY_LATER, QPS_LIMIT = 336000, 336003, 336005, 336100, 18
ROLES = ("user", "assistant")
MAX_STOPS = 4
TOKEN_TTL = (1, 30 * 86400)  # seconds a bearer token may be asked to live


class ChatFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def _invalid(field: str, message: str) -> ChatFailure:
    return ChatFailure(INVALID_PARAM, f"the field {field} is invalid: {message}")


def _number(body: dict[str, Any], field: str, lo: float, hi: float) -> float | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(field, "must be a number")
    if not lo <= value <= hi:
        raise _invalid(field, f"must be between {lo:g} and {hi:g}")
    return float(value)


def _integer(body: dict[str, Any], field: str, lo: int, hi: int) -> int | None:
    value = body.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise _invalid(field, f"must be an integer from {lo} to {hi}")
    return value


def parse_v1(body: dict[str, Any]) -> tuple[list[dict[str, Any]], GenerationParams, bool]:
    """Qianfan's V1 chat body: user/assistant `messages`, a separate `system`, and its sampling fields."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _invalid("messages", "a non-empty array is required")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise _invalid(f"messages[{i}]", "each message needs a role (user or assistant) and content")
        out.append({"role": m["role"], "content": m["content"]})
    system = body.get("system")
    if system is not None:
        if not isinstance(system, str):
            raise _invalid("system", "must be a string")
        out.insert(0, {"role": "system", "content": system})
    stop = body.get("stop")
    if stop is not None and (
        not isinstance(stop, list) or len(stop) > MAX_STOPS or not all(isinstance(x, str) for x in stop)
    ):
        raise _invalid("stop", f"an array of up to {MAX_STOPS} strings")
    seed = _integer(body, "seed", 0, 2**32 - 1)
    params = GenerationParams(
        max_tokens=_integer(body, "max_output_tokens", 1, 1 << 20),
        # Qianfan's range is (0, 1]; 0 is taken too, as greedy decoding.
        temperature=_number(body, "temperature", 0, 1),
        top_p=_number(body, "top_p", 0, 1),
        stop=list(stop or []),
        seed=seed,
    )
    return out, params, body.get("stream") is True


def _deployment(s: Session, account: int, endpoint: str) -> str:
    """The caller's service called `endpoint`, else a base model of that name (deployed on first use)."""
    try:
        dep = dep_svc.get_deployment(s, account, endpoint)
    except NotFound:
        target = dep_svc.resolve_model_target(s, account, endpoint)
        if target is None or target.weights_kind != "base":
            raise
        dep = dep_svc.deployment_for_model(s, account, target)
    if dep.status == DeploymentStatus.DELETING:
        raise ChatFailure(TRY_LATER, f"the service {endpoint} is being deleted; try again")
    return dep.key


def _v1_failure(exc: Exception) -> Response:
    if isinstance(exc, ChatFailure):
        return qianfan_v1_error(exc.code, exc.message)
    if isinstance(exc, NotFound):
        return qianfan_v1_error(NO_SUCH_API, "Unsupported openapi method: no such service")
    raise exc


@router.post(CHAT_PATH + "{endpoint}")
async def chat_v1(endpoint: str, request: Request) -> Response:
    ctx = ctx_of(request)
    account = await qianfan_account(request, ctx)
    try:
        body = await json_object(request, empty={})
        if body is None:
            raise ChatFailure(INVALID_PARAM, "the body must be a JSON object")
        messages, params, stream = parse_v1(body)
        key = await run_in_threadpool(_in_session, ctx, account, endpoint)
        await request.app.state.supervisor.ensure(key)
    except EngineError as exc:
        return qianfan_v1_error(INTERNAL, f"the service could not be started: {exc}")
    except (ChatFailure, NotFound) as exc:
        return _v1_failure(exc)
    except QuotaExceeded as exc:  # e.g. a base model's first use would pass the account's deployment limit
        return qianfan_v1_error(QPS_LIMIT, exc.message)
    events = request.app.state.supervisor.generate(key, messages, params)
    cid, created = "as-" + secrets.token_hex(8), int(time.time())
    if stream:
        return StreamingResponse(
            _frames(events, cid, created),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    text, reason, usage = "", "stop", Usage(0, 0)
    try:
        async for ev in events:
            if isinstance(ev, Delta):
                text += ev.text
            elif isinstance(ev, ChoiceEnd):
                reason = ev.finish_reason
            else:
                usage = ev
    except EngineError as exc:
        return qianfan_v1_error(INTERNAL, f"the service failed: {exc}")
    return JSONResponse({**_answer(cid, created, text, reason, usage), "result": text})


def _in_session(ctx: AppContext, account: int, endpoint: str) -> str:
    with ctx.db.session() as s:
        return _deployment(s, account, endpoint)


def _usage(u: Usage) -> dict[str, int]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    }


def _answer(cid: str, created: int, text: str, reason: str, usage: Usage) -> dict[str, Any]:
    return {
        "id": cid,
        "object": "chat.completion",
        "created": created,
        "result": text,
        "is_truncated": reason == "length",
        "need_clear_history": False,
        "finish_reason": "normal" if reason == "stop" else reason,
        "usage": _usage(usage),
    }


async def _frames(events: AsyncIterator[Any], cid: str, created: int) -> AsyncIterator[bytes]:
    """One frame per piece of text; the last piece is held back so that its frame carries `is_end`."""

    def frame(obj: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"

    sentence, pending, reason, so_far = 0, "", "stop", 0
    try:
        async for ev in events:
            if isinstance(ev, Delta) and ev.text:
                if pending:
                    yield frame(
                        {
                            "id": cid,
                            "object": "chat.completion",
                            "created": created,
                            "sentence_id": sentence,
                            "is_end": False,
                            "is_truncated": False,
                            "result": pending,
                            "need_clear_history": False,
                            "usage": _usage(Usage(0, so_far)),
                        }
                    )
                    sentence += 1
                pending = ev.text
                so_far += 1
            elif isinstance(ev, ChoiceEnd):
                reason = ev.finish_reason
            elif isinstance(ev, Usage):
                last = {**_answer(cid, created, pending, reason, ev), "sentence_id": sentence, "is_end": True}
                yield frame(last)
    except EngineError as exc:
        # The 200 has gone out: an error_code frame makes the SDK raise APIError.
        yield frame({"error_code": INTERNAL, "error_msg": f"the service failed: {exc}", "id": cid})


# ---- V2 ----------------------------------------------------------------------------------------------


@router.get("/v1/BCE-BEARER/token")
async def issue_bearer_token(request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    account = await qianfan_account(request, ctx)
    rid = request_id()
    raw = request.query_params.get("expireInSeconds", "86400")
    lo, hi = TOKEN_TTL
    if not raw.isdigit() or not lo <= int(raw) <= hi:
        message = f"param[expireInSeconds] invalid: an integer from {lo} to {hi}, got {echo(raw)!r}"
        return qianfan_v2_error(400, "InvalidParameter", message, req_id=rid)
    ak = request.headers.get("authorization", "").split("/")[1]  # verified by qianfan_account
    hit = credential_cache.shared().cached_signing(ak)
    if hit is None:
        hit = await run_in_threadpool(credential_cache.shared().signing_lookup, ctx.db, ctx.box, ak)
    assert hit is not None
    now = datetime.now(UTC).replace(microsecond=0)
    expires = now + timedelta(seconds=int(raw))
    return JSONResponse(
        {
            "userId": str(account),
            "token": bearer.issue(ak, hit.secret_key, expires),
            "status": "enable",
            "createTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "expireTime": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        headers={"X-Bce-Request-Id": rid},
    )


@v2_router.post("/v2/chat/completions")
async def chat_v2(request: Request) -> Response:
    ctx = ctx_of(request)
    account = await bearer_account(request, ctx)
    if account is None:
        raise OpenAIError(401, "a valid bearer token is required", code="invalid_token")
    chat = openai_chat.parse_chat(await json_object(request))

    def deployment() -> str:
        try:
            return _in_session(ctx, account, chat.model)
        except NotFound:
            raise OpenAIError(
                404, f"the model {echo(chat.model)!r} does not exist", param="model", code="model_not_found"
            ) from None
        except ChatFailure as exc:
            raise OpenAIError(503, exc.message, type_="server_error") from None

    key = await run_in_threadpool(deployment)
    return await openai_chat.complete(request.app.state.supervisor, key, chat)
