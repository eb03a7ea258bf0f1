"""FastJSONResponse: orjson's body where it writes the same JSON as Starlette's JSONResponse, the stdlib's
answer where orjson would write something else."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from starlette.responses import JSONResponse

from tunehouse.api.fast_json import FastJSONResponse

TASK = {
    "taskId": "task-abc",
    "jobName": '训练 \u2028 tab\t nl\n ctl\x01 del\x7f quote" slash/ back\\',
    "hyperParameterConfig": {"learningRate": 1e-05, "epoch": 3, "warmupRatio": 0.0, "big": 1e22},
    "packing": True,
    "checkpointList": [{"step": 30, "evalLoss": 1.5}],
}


def test_a_task_is_the_same_json_document_as_the_stdlib_writes() -> None:
    fast = FastJSONResponse(TASK).body
    assert json.loads(fast) == json.loads(JSONResponse(TASK).body)
    assert repr(json.loads(fast)) == repr(TASK)  # types and key order too


def test_without_floats_below_1e_minus_4_the_bytes_are_the_stdlibs() -> None:
    task = {**TASK, "hyperParameterConfig": {"learningRate": 0.001, "epoch": 3, "big": 1e22}}
    assert FastJSONResponse(task).body == JSONResponse(task).body


@pytest.mark.parametrize(
    "content",
    [
        {"big": 2**64, "negative": -(2**63) - 1},
        {1: "a non-string key"},
    ],
)
def test_what_orjson_refuses_is_written_by_the_stdlib(content: Any) -> None:
    assert FastJSONResponse(content).body == JSONResponse(content).body


def test_nulls_are_the_stdlibs_nulls() -> None:
    content = {"error": None, "text": "says null", "list": [None, 1]}
    assert FastJSONResponse(content).body == JSONResponse(content).body


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf])
def test_a_non_finite_number_is_written_as_null_where_the_stdlib_refuses_the_answer(number: float) -> None:
    with pytest.raises(ValueError):
        JSONResponse({"loss": number})
    assert json.loads(FastJSONResponse({"loss": number, "step": 3}).body) == {"loss": None, "step": 3}
