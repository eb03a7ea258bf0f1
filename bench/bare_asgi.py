"""The reference server bench/api_latency.py measures beside Tunehouse: the same uvicorn (httptools, uvloop)
answering a fixed JSON body of a polled answer's size with no framework, no database and no auth. Its
requests per CPU-second are this machine's ceiling for any Python service on that stack."""

from __future__ import annotations

import json

from starlette.types import Receive, Scope, Send

BODY = json.dumps({"id": "ftjob-b00000000001", "object": "fine_tuning.job", "status": "succeeded",
                   "padding": "x" * 900}).encode()  # fmt: skip
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
