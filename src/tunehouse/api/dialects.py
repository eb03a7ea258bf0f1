"""Which dialect a path belongs to, and that dialect's answer for failures no route of its own handles
(unknown paths, wrong methods, over-limit bodies, malformed input, rate limits). Each answer is built by the
dialect's own error mapping (its package's errors module)."""

from __future__ import annotations

from enum import StrEnum

from fastapi.responses import Response

from tunehouse.api.dashscope import errors as dashscope_errors
from tunehouse.api.envelopes import KIND_STATUS, Kind, bounded
from tunehouse.api.openai import errors as openai_errors
from tunehouse.api.qianfan import errors as qianfan_errors


class Dialect(StrEnum):
    QIANFAN_V2 = "qianfan_v2"
    QIANFAN_V1 = "qianfan_v1"
    DASHSCOPE = "dashscope"
    OPENAI = "openai"
    CONSOLE = "console"
    OTHER = "other"


_PREFIXES = (
    ("/wenxinworkshop", Dialect.QIANFAN_V1),
    ("/rpc/2.0/ai_custom", Dialect.QIANFAN_V1),  # V1 chat: errors as error_code in a 200
    ("/v2/chat", Dialect.OPENAI),  # V2 chat answers in OpenAI's shape, errors included
    ("/v1/BCE-BEARER", Dialect.QIANFAN_V2),  # Qianfan's IAM token call, BCE-signed
    ("/v2", Dialect.QIANFAN_V2),
    ("/api/v1", Dialect.DASHSCOPE),
    ("/v1", Dialect.OPENAI),
    ("/compatible-mode", Dialect.OPENAI),  # DashScope's OpenAI-shaped routes answer as OpenAI does
    ("/console", Dialect.CONSOLE),
)


def dialect_of(path: str) -> Dialect:
    for prefix, dialect in _PREFIXES:
        if path == prefix or path.startswith(prefix + "/"):
            return dialect
    return Dialect.OTHER


def dialect_error(
    dialect: Dialect,
    kind: Kind,
    message: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
) -> Response:
    message = bounded(message)
    resp: Response
    if dialect is Dialect.QIANFAN_V2:
        resp = qianfan_errors.v2_kind_error(kind, message)
    elif dialect is Dialect.QIANFAN_V1:
        resp = qianfan_errors.v1_kind_error(kind, message)
    elif dialect is Dialect.DASHSCOPE:
        resp = dashscope_errors.kind_error(kind, message)
    elif dialect is Dialect.CONSOLE:
        resp = console_error(KIND_STATUS[kind], message)
    else:
        resp = openai_errors.kind_error(kind, message, param)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def console_error(status: int, message: str) -> Response:
    # Import here: the console's pages pull in its templates, which nothing else needs at import time.
    from tunehouse.api.console.routes import error_page

    return error_page(status, message)
