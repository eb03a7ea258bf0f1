"""Raw HTTP against a live server, for input no SDK would send: BCE-signed by the qianfan SDK's own signer,
and a signed-in console session."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from tests.conftest import LiveServer


def bce_headers(
    server: LiveServer, keys: dict[str, str], path: str, query: dict[str, str], method: str = "POST"
) -> dict[str, str]:
    """The headers the qianfan SDK sends for a console request to `path`, signed by its own signer."""
    from qianfan.resources.auth.iam import iam_sign
    from qianfan.resources.typing import QfRequest

    req = QfRequest(
        method=method,
        url=path,
        query=dict(query),
        headers={"Content-Type": "application/json", "Host": f"127.0.0.1:{server.port}"},
    )
    iam_sign(keys["access_key"], keys["secret_key"], req)
    return dict(req.headers)


def signed_post(
    server: LiveServer, keys: dict[str, str], path: str, body: bytes, query: dict[str, str] | None = None
) -> httpx.Response:
    query = query or {}
    headers = bce_headers(server, keys, path, query)
    return httpx.post(server.url + path, params=query, headers=headers, content=body, timeout=60)


@contextmanager
def console_client(server: LiveServer, api_key: str) -> Iterator[httpx.Client]:
    """An httpx client signed in to the console with `api_key`, as a browser would be."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        page = client.get("/console/login")
        found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert found, page.text[:500]
        r = client.post("/console/login", data={"api_key": api_key, "csrf_token": found.group(1)})
        assert r.status_code == 303, r.text[:500]
        yield client


def no_traceback(r: httpx.Response) -> Any:
    assert "Traceback" not in r.text and '"detail"' not in r.text, r.text[:500]
    return r
