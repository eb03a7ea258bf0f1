"""A JSONResponse whose body orjson writes: for the polled status answers, whose stdlib encoding (a run's
hyperparameters are mostly floats) cost a tenth of the poll.

What orjson would write differently from Starlette's JSONResponse is left to the stdlib: a None or a
non-finite float (orjson writes null for both, the stdlib refuses the latter), integers beyond 64 bits,
non-string keys, text the stdlib cannot encode. What remains differs only in how some floats are spelled
(1e-05 is 0.00001): the same JSON numbers.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            body = orjson.dumps(content)
        except TypeError:  # orjson.JSONEncodeError is one
            return super().render(content)
        if b"null" in body:
            return super().render(content)
        return body
