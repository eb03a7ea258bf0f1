"""The polling lane takes exactly the requests the router would give the polled routes, and no others."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from fastapi import FastAPI

from tunehouse.api.app import create_app
from tunehouse.api.dashscope import routes as dashscope
from tunehouse.api.openai import fine_tuning as openai_fine_tuning
from tunehouse.api.polling import PolledCall
from tunehouse.api.qianfan import v2 as qianfan_v2
from tunehouse.config import load_settings

POLLED = {
    "qianfan": (qianfan_v2.POLLED, "/v2/finetuning"),
    "openai": (openai_fine_tuning.POLLED, "/v1/fine_tuning/jobs/ftjob-abc123def456"),
    "dashscope": (dashscope.POLLED, "/api/v1/fine-tunes/ft-202611010000-abc123def456"),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNEHOUSE_HOME", str(tmp_path_factory.mktemp("home")))
        return create_app(load_settings(), run_scheduler=False)  # routes only: no lifespan is run


def routed(app: FastAPI, method: str, path: str) -> str | None:
    """The path template of the route FastAPI's router picks for this request (it notes the route in the
    scope before calling the endpoint, which fails here: the app was never started)."""
    scope: dict[str, Any] = {"type": "http", "method": method, "path": path, "root_path": "",
                             "query_string": b"", "headers": []}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        pass

    with contextlib.suppress(Exception):
        asyncio.run(app.router(scope, receive, send))
    return getattr(scope.get("route"), "path", None)


def lane_takes(call: PolledCall, method: str, path: str) -> bool:
    return call.method == method and call.pattern.match(path) is not None


@pytest.mark.parametrize("dialect", list(POLLED))
def test_a_polled_request_is_one_the_router_gives_the_same_route(app: FastAPI, dialect: str) -> None:
    call, path = POLLED[dialect]
    assert lane_takes(call, call.method, path)
    assert routed(app, call.method, path) == call.template


@pytest.mark.parametrize(
    ("dialect", "method", "path"),
    [
        ("openai", "GET", "/v1/fine_tuning/jobs/ftjob-abc/events"),
        ("openai", "GET", "/v1/fine_tuning/jobs/"),
        ("openai", "POST", "/v1/fine_tuning/jobs/ftjob-abc"),
        ("dashscope", "GET", "/api/v1/fine-tunes/ft-1-abc/logs"),
        ("dashscope", "DELETE", "/api/v1/fine-tunes/ft-1-abc"),
        ("qianfan", "GET", "/v2/finetuning"),
        ("qianfan", "POST", "/v2/finetuning/x"),
    ],
)
def test_other_paths_and_methods_are_left_to_the_router(dialect: str, method: str, path: str) -> None:
    call, _ = POLLED[dialect]
    assert not lane_takes(call, method, path)


def test_the_app_answers_the_polled_calls_through_the_lane(app: FastAPI) -> None:
    lanes = []
    layer = app.build_middleware_stack()
    while layer is not None:
        if type(layer).__name__ == "PollingLane":
            lanes.append(layer)
        layer = getattr(layer, "app", None)
    assert [set(c.template for c in lane.calls) for lane in lanes] == [
        {call.template for call, _ in POLLED.values()}
    ]
