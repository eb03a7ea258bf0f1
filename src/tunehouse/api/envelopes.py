"""Error envelopes, one per dialect, exactly as the SDKs expect them."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.responses import JSONResponse


def request_id() -> str:
    return str(uuid.uuid4())


def qianfan_v2_error(
    status: int, code: str, message: str, header_message: str | None = None, req_id: str | None = None
) -> JSONResponse:
    rid = req_id or request_id()
    # Header values must be latin-1; messages may carry user text.
    header = (header_message or f"{code}, cause: {message}").encode("ascii", "replace").decode()
    return JSONResponse(
        {"requestId": rid, "code": code, "message": message},
        status_code=status,
        headers={"X-Bce-Request-Id": rid, "X-Bce-Error-Code": code, "X-Bce-Error-Message": header},
    )


def qianfan_v1_error(error_code: int, message: str) -> JSONResponse:
    # V1 errors travel as HTTP 200 with error_code: that is what makes the SDK raise APIError.
    return JSONResponse(
        {"log_id": str(uuid.uuid4().int % 10**10), "error_code": error_code, "error_msg": message}
    )


def openai_error(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)
