"""Request bodies: a JSON object or nothing; everything else is for the dialect to refuse."""

import asyncio

import pytest
from starlette.requests import Request

from tunehouse.api.json_body import json_object


def request_with(body: bytes) -> Request:
    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request({"type": "http", "method": "POST", "headers": [], "path": "/"}, receive)


def read(body: bytes, empty: dict[str, object] | None = None) -> object:
    return asyncio.run(json_object(request_with(body), empty=empty))


def test_an_object_is_returned_as_a_dict():
    assert read(b'{"a": 1}') == {"a": 1}


def test_a_blank_body_gives_the_callers_empty_value():
    assert read(b"  ", empty={}) == {}
    assert read(b"") is None


@pytest.mark.parametrize("body", [b"[1, 2]", b'"text"', b"{not json", b"3"])
def test_anything_but_an_object_is_none(body: bytes):
    assert read(body) is None
