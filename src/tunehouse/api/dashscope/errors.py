"""The DashScope dialect's one error mapping: its envelope, and what every failure of its routes answers."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from tunehouse.api.dashscope import names
from tunehouse.api.envelopes import KIND_STATUS, bounded, request_id
from tunehouse.api.rate_limit import RateLimited
from tunehouse.core.errors import (
    Conflict,
    FileInUse,
    InvalidInput,
    InvalidParameter,
    NameTaken,
    NotFound,
    QuotaExceeded,
)
from tunehouse.core.storage import NO_SPACE_MESSAGE, out_of_space

log = logging.getLogger(__name__)


def ds_error(status: int, code: str, message: str) -> JSONResponse:
    rid = request_id()
    headers = {"X-Request-Id": rid}
    # The 2.x client retries 409/429/5xx; a create that conflicted or failed must not be sent again.
    if status in (409, 429) or status >= 500:
        headers["x-should-retry"] = "false"
    return JSONResponse(
        {"request_id": rid, "code": code, "message": bounded(message)}, status_code=status, headers=headers
    )


class ApiError(Exception):
    """An answer in DashScope's error envelope: HTTP status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def invalid(message: str) -> ApiError:
    return ApiError(400, "InvalidParameter", message)


# Failures no route of the dialect handles (see api/dialects.py): the code by kind.
KINDS = {
    "invalid": "InvalidParameter",
    "not_found": "NotFound",
    "method": "MethodNotAllowed",
    "too_large": "RequestTooLarge",
    "rate_limited": "Throttling",
    "internal": "InternalError",
}


def kind_error(kind: str, message: str) -> JSONResponse:
    return ds_error(KIND_STATUS[kind], KINDS[kind], message)


def storage_error(message: str) -> JSONResponse:
    return ds_error(507, "InsufficientStorage", message)


def failure(exc: Exception) -> Response:
    """What a route's failure answers, request validation included."""
    if isinstance(exc, ApiError):
        return ds_error(exc.status, exc.code, exc.message)
    if isinstance(exc, RequestValidationError):
        err = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ()))
        return ds_error(400, "InvalidParameter", f"{where}: {err.get('msg', 'invalid request')}")
    if isinstance(exc, InvalidParameter):
        field = exc.field if isinstance(exc, InvalidInput) else names.field_out(exc.field)
        return ds_error(400, "InvalidParameter", f"{field}: {exc.message}")
    if isinstance(exc, NotFound):
        return ds_error(404, "NotFound", f"Not found! {exc.message}")
    if isinstance(exc, NameTaken):
        return ds_error(409, "Conflict", exc.message)
    if isinstance(exc, FileInUse):
        ids = ", ".join(names.job_id(r.key, r.created_at) for r in exc.runs)
        return ds_error(400, "UnsupportedOperation", f"The file is used by unfinished fine-tune job(s) {ids}")
    if isinstance(exc, Conflict):
        return ds_error(400, "UnsupportedOperation", exc.message)
    if isinstance(exc, QuotaExceeded):
        return ds_error(429, "Throttling", exc.message)
    if isinstance(exc, RateLimited):
        # Unlike a full run quota, a request rate frees up in seconds: the SDK may retry after them.
        response = ds_error(429, "Throttling", exc.message)
        response.headers.update({**exc.headers, "x-should-retry": "true"})
        return response
    if out_of_space(exc):
        log.warning("DashScope request failed: no space left on device")
        return storage_error(NO_SPACE_MESSAGE)
    log.exception("DashScope request failed", exc_info=exc)
    return ds_error(500, "InternalError", "Internal server error!")


async def ds_guarded(answer: Awaitable[Response]) -> Response:
    """`answer` awaited, with any failure as its DashScope error (the routes' and the polling lane's)."""
    try:
        return await answer
    except ClientDisconnect:
        raise  # the edge logs it at debug: the caller is gone, nobody reads an answer
    except Exception as exc:
        return failure(exc)


class DashScopeRoute(APIRoute):
    """Every failure of these routes, request validation included, answers in DashScope's envelope."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            return await ds_guarded(handler(request))

        return guarded
