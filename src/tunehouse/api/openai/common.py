"""What the OpenAI routers share: the caller behind a bearer key, the error envelope, list paging."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from tunehouse.api.bearer_auth import BearerFailure, bearer_hit
from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.envelopes import openai_error, request_id
from tunehouse.api.limits import echo
from tunehouse.api.rate_limit import RateLimited, count_request
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound, QuotaExceeded
from tunehouse.core.storage import NO_SPACE_MESSAGE, out_of_space

INSUFFICIENT_STORAGE = "insufficient_storage"

log = logging.getLogger(__name__)


class OpenAIError(Exception):
    """An answer in OpenAI's error envelope. Never 409: the SDK would retry it."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type_


class OpenAIRoute(APIRoute):
    """Every answer carries x-request-id; every failure, request validation included, is an OpenAI error."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def guarded(request: Request) -> Response:
            return await openai_guarded(handler(request))

        return guarded


async def openai_guarded(answer: Awaitable[Response]) -> Response:
    """`answer` awaited, with any failure as its OpenAI error; either way with x-request-id."""
    rid = request_id()
    try:
        response = await answer
    except OpenAIError as e:
        response = openai_error(e.status, e.message, e.type, e.param, e.code)
    except BearerFailure as e:
        response = openai_error(401, e.message, code="invalid_api_key")
    except RequestValidationError as e:
        err = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
        response = openai_error(400, f"{where}: {err.get('msg', 'invalid request')}", param=where)
    except InvalidParameter as e:
        response = openai_error(400, f"{e.field}: {e.message}", param=e.field)
    except NotFound as e:
        response = openai_error(404, e.message)
    except Conflict as e:
        response = openai_error(400, e.message, code="invalid_state")
    except QuotaExceeded as e:
        # Seconds of backoff cannot end a training run: a retry would only repeat the refusal.
        response = openai_error(
            429,
            e.message,
            type_="rate_limit_error",
            code="rate_limit_exceeded",
            headers={"x-should-retry": "false"},
        )
    except RateLimited as e:
        response = openai_error(
            429, e.message, type_="rate_limit_error", code="rate_limit_exceeded", headers=e.headers
        )
    except ClientDisconnect:
        raise  # the edge logs it at debug: the caller is gone, nobody reads an answer
    except Exception as exc:
        if out_of_space(exc):
            log.warning("OpenAI-dialect request failed: no space left on device")
            response = openai_error(507, NO_SPACE_MESSAGE, "server_error", code=INSUFFICIENT_STORAGE)
        else:
            log.exception("OpenAI-dialect request failed")
            response = openai_error(500, "The server had an error while processing your request.")
        response.headers["x-should-retry"] = "false"  # a retry of the same request fails the same
    response.headers["x-request-id"] = rid
    return response


@dataclass(frozen=True)
class Caller:
    account_id: int
    account_name: str

    @property
    def organization_id(self) -> str:
        return "org-" + self.account_name


async def openai_caller(request: Request, ctx: AppContext = Depends(get_ctx)) -> Caller:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise BearerFailure("You didn't provide an API key: send it as 'Authorization: Bearer <key>'.")
    hit = await bearer_hit(ctx, token.strip())
    if hit is None:
        raise BearerFailure("Incorrect API key provided.")
    count_request(request, hit.account_id)
    return Caller(hit.account_id, hit.account_name)


def limit_param(request: Request, default: int, maximum: int) -> int:
    """`limit` from the query: below 1 or not an integer is refused, above the maximum is clamped."""
    raw = request.query_params.get("limit")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise OpenAIError(400, f"limit must be an integer, got {echo(raw)!r}", param="limit") from None
    if value < 1:
        raise OpenAIError(400, f"limit must be at least 1, got {value}", param="limit")
    return min(value, maximum)


def listing(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "has_more": has_more,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def bad_cursor(after: str) -> OpenAIError:
    return OpenAIError(400, f"Invalid 'after': no item {echo(after)!r} in this list.", param="after")
