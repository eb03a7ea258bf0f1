"""Contract fuzzing: schemathesis drives every documented route of a live server with generated requests,
valid and invalid, authenticated as each dialect's clients are (Qianfan's BCE-signed by its SDK's signer).
No answer is a 5xx, none breaks the published document, and no body carries a traceback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import LiveServer, kill_trainers, start_server
from tests.integration.http_helpers import bce_headers

EXAMPLES = 10  # per operation and generation mode: well under a minute for every route together


@pytest.fixture(scope="module")
def fuzz_server(
    tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, make_pg_database: Any
) -> Iterator[LiveServer]:
    srv = start_server(tmp_path_factory.mktemp("fuzz"), "postgres", tiny_model, make_pg_database)
    yield srv
    srv.stop()
    kill_trainers(srv.home)


@pytest.fixture(scope="module")
def fuzz_keys(fuzz_server: LiveServer) -> dict[str, str]:
    return fuzz_server.keys("fuzzer")


def _operations() -> list[tuple[str, str]]:
    # Collected from the app itself (building it is cheap and touches no home); the test fuzzes the live copy.
    from tunehouse.api.app import create_app
    from tunehouse.config import Settings

    app = create_app(
        Settings(home=Path("/nonexistent"), database_url="sqlite://", max_running=1, public_url="")
    )
    return [(m.upper(), p) for p, ops in app.openapi()["paths"].items() for m in ops]


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")


def no_traceback(ctx: Any, response: schemathesis.Response, case: schemathesis.Case) -> bool:
    text = response.content.decode("utf-8", "replace")
    assert "Traceback" not in text, text[:500]
    assert not text.startswith('{"detail"'), text[:500]
    return True


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    no_traceback,
]


# Qianfan's BCE-signed paths; its V2 chat (`/v2/chat/…`) takes a bearer token instead.
BCE_SIGNED = ("/v2/", "/wenxinworkshop/", "/rpc/2.0/ai_custom/", "/v1/BCE-BEARER/")


def bce_signed(path: str) -> bool:
    return path.startswith(BCE_SIGNED) and not path.startswith("/v2/chat/")


def auth_headers(case: schemathesis.Case, server: LiveServer, keys: dict[str, str]) -> dict[str, str]:
    path = case.formatted_path
    if bce_signed(path):
        query = {k: str(v) for k, v in (case.query or {}).items() if not isinstance(v, list)}
        return bce_headers(server, keys, path, query, case.method.upper())
    return {"Authorization": f"Bearer {keys['api_key']}"}


@pytest.mark.parametrize(("method", "path"), _operations())
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_keeps_its_contract(
    api_schema: Any,
    fuzz_server: LiveServer,
    fuzz_keys: dict[str, str],
    method: str,
    path: str,
    mode: GenerationMode,
) -> None:
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def fuzz(case: schemathesis.Case) -> None:
        headers = auth_headers(case, fuzz_server, fuzz_keys)
        response = case.call(base_url=fuzz_server.url, headers=headers, timeout=60)
        case.validate_response(response, checks=CHECKS)

    fuzz()


def test_the_document_describes_bodies_queries_and_each_dialects_auth(fuzz_server: LiveServer) -> None:
    import httpx

    doc = httpx.get(fuzz_server.url + "/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"bce", "bearer"}
    ops = {(m, p): o for p, item in doc["paths"].items() for m, o in item.items()}
    assert all("422" not in o["responses"] for o in ops.values())  # never sent: each dialect answers 400
    for (method, path), op in ops.items():
        scheme = "bce" if bce_signed(path) else "bearer"
        assert op["security"] == [{scheme: []}], (method, path)
        if method == "post" and not path.endswith(("/cancel", "/pause", "/resume", "/permissions")):
            assert "requestBody" in op, (method, path)
    queries = {p["name"] for p in ops[("get", "/api/v1/fine-tunes")]["parameters"]}
    assert {"page_no", "page_size"} <= queries
    assert "Action" in {p["name"] for p in ops[("post", "/v2/finetuning")]["parameters"]}
