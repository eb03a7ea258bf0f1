"""The OpenAI dialect's one error mapping: its envelope, and what every failure of its routes answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from tunehouse.api.envelopes import KIND_STATUS, bounded, request_id
from tunehouse.api.limits import echo
from tunehouse.api.rate_limit import RateLimited
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound, QuotaExceeded
from tunehouse.core.storage import NO_SPACE_MESSAGE, out_of_space

INSUFFICIENT_STORAGE = "insufficient_storage"

log = logging.getLogger(__name__)


def openai_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "error": {"message": bounded(message), "type": type_, "param": param and echo(param), "code": code}
    }
    return JSONResponse(body, status_code=status, headers={"x-request-id": request_id(), **(headers or {})})


class OpenAIError(Exception):
    """An answer in OpenAI's error envelope. Never 409: the SDK would retry it."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


# Failures no route of the dialect handles (see api/dialects.py): (type, code) by kind.
KINDS: dict[str, tuple[str, str | None]] = {
    "invalid": ("invalid_request_error", "invalid_value"),
    "not_found": ("invalid_request_error", "not_found"),
    "method": ("invalid_request_error", "method_not_allowed"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "rate_limited": ("rate_limit_error", "rate_limit_exceeded"),
    "internal": ("server_error", None),
}


def kind_error(kind: str, message: str, param: str | None = None) -> JSONResponse:
    type_, code = KINDS[kind]
    resp = openai_error(KIND_STATUS[kind], message, type_, param, code)
    if kind in ("internal", "too_large"):
        resp.headers["x-should-retry"] = "false"
    return resp


def storage_error(message: str) -> JSONResponse:
    no_retry = {"x-should-retry": "false"}  # seconds of backoff will not free the disk
    return openai_error(507, message, type_="server_error", code=INSUFFICIENT_STORAGE, headers=no_retry)


def failure(exc: Exception) -> Response:
    """What a route's failure answers, request validation included."""
    if isinstance(exc, OpenAIError):
        return openai_error(exc.status, exc.message, exc.type, exc.param, exc.code)
    if isinstance(exc, RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        return openai_error(400, f"{where}: {err.get('msg', 'invalid request')}", param=where)
    if isinstance(exc, InvalidParameter):
        return openai_error(400, f"{exc.field}: {exc.message}", param=exc.field)
    if isinstance(exc, NotFound):
        return openai_error(404, exc.message)
    if isinstance(exc, Conflict):
        return openai_error(400, exc.message, code="invalid_state")
    if isinstance(exc, QuotaExceeded):
        # Seconds of backoff cannot end a training run: a retry would only repeat the refusal.
        return openai_error(
            429,
            exc.message,
            type_="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"x-should-retry": "false"},
        )
    if isinstance(exc, RateLimited):
        return openai_error(
            429, exc.message, type_="rate_limit_error", code="rate_limit_exceeded", headers=exc.headers
        )
    response: Response
    if out_of_space(exc):
        log.warning("OpenAI-dialect request failed: no space left on device")
        response = openai_error(507, NO_SPACE_MESSAGE, "server_error", code=INSUFFICIENT_STORAGE)
    else:
        log.exception("OpenAI-dialect request failed", exc_info=exc)
        response = openai_error(500, "The server had an error while processing your request.")
    response.headers["x-should-retry"] = "false"  # a retry of the same request fails the same
    return response


async def openai_guarded(answer: Awaitable[Response]) -> Response:
    """`answer` awaited, with any failure as its OpenAI error; either way with x-request-id (the routes'
    and the polling lane's)."""
    rid = request_id()
    try:
        response = await answer
    except ClientDisconnect:
        raise  # the edge logs it at debug: the caller is gone, nobody reads an answer
    except Exception as exc:
        response = failure(exc)
    response.headers["x-request-id"] = rid
    return response


class OpenAIRoute(APIRoute):
    """Every answer carries x-request-id; every failure, request validation included, is an OpenAI error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            return await openai_guarded(handler(request))

        return guarded
