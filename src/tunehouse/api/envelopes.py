"""Error envelopes, one per dialect, exactly as the SDKs expect them; each carries the request's id."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse

from tunehouse.api.limits import MAX_ECHO_CHARS, echo
from tunehouse.api.request_context import current_request_id, new_request_id

# A message quotes caller input at most MAX_ECHO_CHARS at a time; this bounds the whole of it.
MAX_MESSAGE_CHARS = 4 * MAX_ECHO_CHARS


def request_id() -> str:
    """The id of the request being served (bound by the edge middleware), or a fresh one outside it."""
    return current_request_id() or new_request_id()


def bounded(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE_CHARS else message[:MAX_MESSAGE_CHARS] + "…"


def qianfan_v2_error(
    status: int, code: str, message: str, header_message: str | None = None, req_id: str | None = None
) -> JSONResponse:
    rid = req_id or request_id()
    message = bounded(message)
    # A header carries no CR/LF/NUL and only latin-1; user text in it is also kept short.
    header = echo(header_message or f"{code}, cause: {message}", MAX_ECHO_CHARS)
    header = header.encode("ascii", "replace").decode()
    return JSONResponse(
        {"requestId": rid, "code": code, "message": message},
        status_code=status,
        headers={"X-Bce-Request-Id": rid, "X-Bce-Error-Code": code, "X-Bce-Error-Message": header},
    )


def qianfan_v1_error(error_code: int, message: str) -> JSONResponse:
    # V1 errors travel as HTTP 200 with error_code: that is what makes the SDK raise APIError.
    rid = request_id()
    return JSONResponse(
        {"log_id": rid, "error_code": error_code, "error_msg": bounded(message)},
        headers={"X-Bce-Request-Id": rid},
    )


def ds_error(status: int, code: str, message: str) -> JSONResponse:
    rid = request_id()
    headers = {"X-Request-Id": rid}
    # The 2.x client retries 409/429/5xx; a create that conflicted or failed must not be sent again.
    if status in (409, 429) or status >= 500:
        headers["x-should-retry"] = "false"
    return JSONResponse(
        {"request_id": rid, "code": code, "message": bounded(message)}, status_code=status, headers=headers
    )


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
