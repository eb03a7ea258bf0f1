"""A JSONResponse whose body orjson writes: for the polled status answers, whose stdlib encoding (a run's
hyperparameters are mostly floats) cost a tenth of the poll.

What orjson refuses is left to the stdlib: integers beyond 64 bits, non-string keys, text it cannot encode.
What remains differs from Starlette's JSONResponse in how some floats are spelled (1e-05 is 0.00001: the
same JSON numbers), and in a non-finite float, which orjson writes as null where the stdlib refuses the
whole answer (a 500 on every poll of that run). The trainer stores none (trainer.events writes them as
null too), so a client sees one only from a store written by other means, and then sees "no value".
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
        return body
