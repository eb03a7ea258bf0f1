"""Log lines: one JSON object each, the same document whichever encoder wrote it."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from tunehouse.api.request_context import bind_request_id, reset_request_id
from tunehouse.logs import JsonFormatter


def record(message: str, *args: object, exc_info: object = None) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, message, args, exc_info)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "message",
    [
        '127.0.0.1:5555 - "GET /v1/fine_tuning/jobs/ftjob-x HTTP/1.1" 200',
        '训练 \u2028 tab\t nl\n ctl\x01 quote"',
    ],
)
def test_a_line_is_one_json_object_with_the_message_as_logged(message: str) -> None:
    line = JsonFormatter().format(record("%s", message))
    assert "\n" not in line
    doc = json.loads(line)
    assert doc["message"] == message
    assert (doc["level"], doc["logger"]) == ("INFO", "uvicorn.access")
    assert doc["time"].endswith("+00:00")


def test_text_orjson_refuses_is_written_by_the_stdlib() -> None:
    line = JsonFormatter().format(record("path %s", "/a\udcff"))  # a lone surrogate, as surrogateescape gives
    assert json.loads(line)["message"] == "path /a\udcff"


def test_a_line_carries_the_request_id_it_was_logged_under() -> None:
    token = bind_request_id("rid-1")
    try:
        line = JsonFormatter().format(record("x"))
    finally:
        reset_request_id(token)
    assert json.loads(line)["request_id"] == "rid-1"


def test_an_exception_is_written_with_its_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        line = JsonFormatter().format(record("failed", exc_info=sys.exc_info()))
    assert "ValueError: boom" in json.loads(line)["exception"]
