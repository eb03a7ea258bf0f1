"""Creates and uploads are refused with each dialect's 507 while the home volume is nearly full.

A pure ASGI middleware, so request bodies (uploads) stream through it untouched.
"""

from __future__ import annotations

import functools
import re
from typing import Any
from urllib.parse import parse_qs

from fastapi.responses import PlainTextResponse, Response

from tunehouse.api.dashscope import errors as dashscope_errors
from tunehouse.api.openai import errors as openai_errors
from tunehouse.api.qianfan import errors as qianfan_errors
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
    if len(path) + len(query) > MAX_REMEMBERED:
        return _creates_something(path, query)
    return _remembered(path, query)


def _creates_something(path: str, query: bytes) -> bool:
    path = re.sub("/{2,}", "/", path).rstrip("/")
    if path == "/v2/finetuning":
        actions = parse_qs(query.decode("latin-1")).get("Action", [])
        return bool(QIANFAN_V2_CREATES.intersection(actions))
    return path in CREATES


# Polls ask the same few (path, query) pairs over and over (Qianfan V2's Describe… share one path and query):
# each is worked out once. Long ones are not kept (the memory would grow with them).
MAX_REMEMBERED = 256
_remembered = functools.lru_cache(maxsize=1024)(_creates_something)


def storage_error(path: str, message: str) -> Response:
    """The dialect's own 'insufficient storage' answer for a request to ``path``."""
    path = re.sub("/{2,}", "/", path)
    if path.startswith("/v2/"):
        return qianfan_errors.storage_error(False, message)
    if path.startswith("/wenxinworkshop/"):
        return qianfan_errors.storage_error(True, message)
    if path.startswith("/api/v1/"):
        return dashscope_errors.storage_error(message)
    if path.startswith("/v1/"):
        return openai_errors.storage_error(message)
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
