"""Which dialect a path belongs to, and that dialect's answer for failures no route of its own handles
(unknown paths, wrong methods, over-limit bodies, malformed input, rate limits)."""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from fastapi.responses import Response

from tunehouse.api.envelopes import bounded, ds_error, openai_error, qianfan_v1_error, qianfan_v2_error


class Dialect(StrEnum):
    QIANFAN_V2 = "qianfan_v2"
    QIANFAN_V1 = "qianfan_v1"
    DASHSCOPE = "dashscope"
    OPENAI = "openai"
    CONSOLE = "console"
    OTHER = "other"


_PREFIXES = (
    ("/wenxinworkshop", Dialect.QIANFAN_V1),
    ("/v2", Dialect.QIANFAN_V2),
    ("/api/v1", Dialect.DASHSCOPE),
    ("/v1", Dialect.OPENAI),
    ("/console", Dialect.CONSOLE),
)


def dialect_of(path: str) -> Dialect:
    for prefix, dialect in _PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return dialect
    return Dialect.OTHER


Kind = Literal["invalid", "not_found", "method", "too_large", "rate_limited", "internal"]
_STATUS: dict[str, int] = {
    "invalid": 400,
    "not_found": 404,
    "method": 405,
    "too_large": 413,
    "rate_limited": 429,
    "internal": 500,
}
_QIANFAN_V2 = {
    "invalid": "InvalidParameter",
    "not_found": "ResourceNotFound",
    "method": "MethodNotAllowed",
    "too_large": "RequestEntityTooLarge",
    "rate_limited": "RequestLimitExceeded",
    "internal": "InternalError",
}
# V1 errors are HTTP 200 with error_code (the SDK raises on that); 18 is its QPS limit, 336000 its
# generic "invalid argument" for a request it cannot route.
_QIANFAN_V1 = {
    "invalid": 500001,
    "not_found": 500002,
    "method": 500002,
    "too_large": 500001,
    "rate_limited": 18,
    "internal": 500000,
}
_DASHSCOPE = {
    "invalid": "InvalidParameter",
    "not_found": "NotFound",
    "method": "MethodNotAllowed",
    "too_large": "RequestTooLarge",
    "rate_limited": "Throttling",
    "internal": "InternalError",
}
_OPENAI = {
    "invalid": ("invalid_request_error", "invalid_value"),
    "not_found": ("invalid_request_error", "not_found"),
    "method": ("invalid_request_error", "method_not_allowed"),
    "too_large": ("invalid_request_error", "request_too_large"),
    "rate_limited": ("rate_limit_error", "rate_limit_exceeded"),
    "internal": ("server_error", None),
}


def dialect_error(
    dialect: Dialect,
    kind: Kind,
    message: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Response:
    status = _STATUS[kind]
    message = bounded(message)
    resp: Response
    if dialect is Dialect.QIANFAN_V2:
        resp = qianfan_v2_error(status, _QIANFAN_V2[kind], message)
    elif dialect is Dialect.QIANFAN_V1:
        resp = qianfan_v1_error(_QIANFAN_V1[kind], message)
        if kind in ("not_found", "method", "too_large"):
            resp.status_code = status  # no route answered: not an API result the SDK should parse
    elif dialect is Dialect.DASHSCOPE:
        resp = ds_error(status, _DASHSCOPE[kind], message)
    elif dialect is Dialect.CONSOLE:
        resp = console_error(status, message)
    else:
        type_, code = _OPENAI[kind]
        resp = openai_error(status, message, type_, param, code)
        if kind in ("internal", "too_large"):
            resp.headers["x-should-retry"] = "false"
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def console_error(status: int, message: str) -> Response:
    # Import here: the console module pulls in templates and the routers, which import this module.
    from tunehouse.api.console.routes import error_page

    return error_page(status, message)
