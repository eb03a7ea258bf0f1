"""Creates and uploads are refused with each dialect's 507 while the home volume is nearly full.

A pure ASGI middleware, so request bodies (uploads) stream through it untouched.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qs

from fastapi.responses import PlainTextResponse, Response

from tunehouse.api.dashscope.routes import ds_error
from tunehouse.api.envelopes import openai_error, qianfan_v1_error, qianfan_v2_error
from tunehouse.api.qianfan.v1 import INTERNAL
from tunehouse.config import Settings
from tunehouse.core.storage import InsufficientStorage, check_room

CREATES = {
    "/v1/files",
    "/v1/fine_tuning/jobs",
    "/api/v1/files",
    "/api/v1/fine-tunes",
    "/wenxinworkshop/finetune/createTask",
    "/wenxinworkshop/finetune/createJob",
}
QIANFAN_V2_CREATES = {"CreateFineTuningJob", "CreateFineTuningTask"}


def creates_something(path: str, query: bytes) -> bool:
    path = re.sub("/{2,}", "/", path).rstrip("/")
    if path == "/v2/finetuning":
        actions = parse_qs(query.decode("latin-1")).get("Action", [])
        return bool(QIANFAN_V2_CREATES.intersection(actions))
    return path in CREATES


def storage_error(path: str, message: str) -> Response:
    """The dialect's own 'insufficient storage' answer for a request to ``path``."""
    path = re.sub("/{2,}", "/", path)
    if path.startswith("/v2/"):
        return qianfan_v2_error(507, "InsufficientStorage", message)
    if path.startswith("/wenxinworkshop/"):
        return qianfan_v1_error(INTERNAL, message)  # V1 errors travel as HTTP 200 with a code
    if path.startswith("/api/v1/"):
        return ds_error(507, "InsufficientStorage", message)
    if path.startswith("/v1/"):
        no_retry = {"x-should-retry": "false"}  # seconds of backoff will not free the disk
        return openai_error(507, message, type_="server_error", code="insufficient_storage", headers=no_retry)
    return PlainTextResponse(message, status_code=507)


class StorageGuard:
    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "POST"
            and creates_something(scope["path"], scope.get("query_string", b""))
        ):
            try:
                check_room(self.settings.home, self.settings.min_free_bytes)
            except InsufficientStorage as e:
                await storage_error(scope["path"], e.message)(scope, receive, send)
                return
        await self.app(scope, receive, send)
