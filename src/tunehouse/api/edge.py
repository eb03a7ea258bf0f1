"""The ASGI layer every request passes first: one request id, normalised paths, bounded bodies.

* Duplicate slashes collapse (`//v2/finetuning` is `/v2/finetuning`); the path as sent is kept in the scope
  for signature checks, which sign what the client sent.
* A path or query carrying control characters (NUL, CR, LF…) is refused in the path's dialect.
* A body larger than its limit is refused with 413: at once from `Content-Length`, else when the limit is
  crossed while reading, never after taking it in. Multipart bodies (uploads) have the upload limit.
* A client that goes away mid-request is an ordinary event, logged at debug.
* An error no handler caught is logged with its traceback and answered in the dialect's envelope (500).
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tunehouse.api.dialects import dialect_error, dialect_of
from tunehouse.api.limits import Limits
from tunehouse.api.query_memo import per_query
from tunehouse.api.request_context import bind_request_id, new_request_id, reset_request_id

log = logging.getLogger(__name__)

ORIGINAL_PATH = "tunehouse.original_path"
_SLASHES = re.compile(r"/{2,}")
_RAW_SLASHES = re.compile(rb"/{2,}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        token = bind_request_id(rid)
        try:
            await self._serve(scope, receive, send)
        finally:
            reset_request_id(token)

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        original = scope["path"]
        path = _SLASHES.sub("/", original)
        scope = {**scope, "path": path, ORIGINAL_PATH: original}
        raw = scope.get("raw_path")
        if path != original and isinstance(raw, bytes):
            scope["raw_path"] = _RAW_SLASHES.sub(b"/", raw)
        dialect = dialect_of(path)

        refusal = self._refusal(scope, path)
        if refusal is not None:
            await dialect_error(dialect, "invalid", refusal)(scope, receive, send)
            return

        content_type, declared = _body_headers(scope["headers"])
        multipart = content_type.lower().startswith("multipart/form-data")
        limit = self.limits.max_upload_bytes if multipart else self.limits.max_body_bytes
        too_large = f"The request body is larger than this server's limit of {limit} bytes."
        if declared.isdigit() and int(declared) > limit:
            await dialect_error(dialect, "too_large", too_large)(scope, receive, send)
            return

        state: dict[str, Any] = {"read": 0, "over": False, "started": False}

        async def bounded_receive() -> Message:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:
                    # To the app the client is gone; the 413 below is what the client gets.
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:
                return  # whatever the app answers to a body it could not read, the 413 replaces it
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, guarded_send)
        except ClientDisconnect:
            if not state["over"]:
                log.debug("client disconnected during %s %s", scope["method"], path)
        except Exception:
            # Escaped every handler: the dialect's envelope still answers, the traceback is only logged.
            log.exception("unhandled error in %s %s", scope["method"], path)
            if not state["started"]:
                await dialect_error(dialect, "internal", "internal error")(scope, receive, send)
            return
        if state["over"] and not state["started"]:
            await dialect_error(dialect, "too_large", too_large)(scope, receive, send)

    def _refusal(self, scope: Scope, path: str) -> str | None:
        if _CONTROL.search(path):
            return "The request path contains control characters."
        query = scope.get("query_string", b"").decode("latin-1")
        if not query:
            return None
        return _query_refusal(query, self.limits.max_string_chars)


def _body_headers(headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
    """Content-Type and Content-Length (the last of each, as a dict of the headers would hold), decoded."""
    content_type = content_length = b""
    for k, v in headers:
        name = k.lower()
        if name == b"content-type":
            content_type = v
        elif name == b"content-length":
            content_length = v
    return content_type.decode("latin-1"), content_length.decode("latin-1")


@per_query(maxsize=1024)
def _query_refusal(query: str, max_chars: int) -> str | None:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return "The query string is not valid UTF-8."
    for k, v in pairs:
        if "\x00" in k or "\x00" in v:
            return "A query parameter contains a NUL character."
        if len(v) > max_chars:
            return f"Query parameter {k[:64]!r} is longer than {max_chars} characters."
    return None
