"""The Qianfan dialect's one error mapping: the V2 and V1 envelopes, and what a failed call answers."""

from __future__ import annotations

import logging

from fastapi.responses import JSONResponse
from pydantic import ValidationError

from tunehouse.api.envelopes import KIND_STATUS, bounded, request_id
from tunehouse.api.limits import MAX_ECHO_CHARS, echo
from tunehouse.api.qianfan.names import V1_FIELDS, field_name
from tunehouse.api.qianfan.signing import AuthFailure
from tunehouse.core.errors import Conflict, InvalidParameter, NotFound, QuotaExceeded
from tunehouse.core.storage import NO_SPACE_MESSAGE, out_of_space

log = logging.getLogger(__name__)

# V1 error codes.
PARAM_INVALID, NOT_FOUND, INTERNAL = 500001, 500002, 500000
# The SDK's RequestLimitReached: a limit, and not one of the codes its console client retries.
REQUEST_LIMIT = 4


def qianfan_v2_error(
    status: int, code: str, message: str, header_message: str | None = None, req_id: str | None = None
) -> JSONResponse:
    rid = req_id or request_id()
    message = bounded(message)
    # A header carries no CR/LF/NUL and only latin-1; user text in it is also kept short.
    header = echo(header_message or f"{code}, cause: {message}", MAX_ECHO_CHARS)
    header = header.encode("ascii", "replace").decode()
    return JSONResponse(
        {"requestId": rid, "code": code, "message": message},
        status_code=status,
        headers={"X-Bce-Request-Id": rid, "X-Bce-Error-Code": code, "X-Bce-Error-Message": header},
    )


def qianfan_v1_error(error_code: int, message: str) -> JSONResponse:
    # V1 errors travel as HTTP 200 with error_code: that is what makes the SDK raise APIError.
    rid = request_id()
    return JSONResponse(
        {"log_id": rid, "error_code": error_code, "error_msg": bounded(message)},
        headers={"X-Bce-Request-Id": rid},
    )


# Failures no route of the dialect handles (see api/dialects.py), by kind.
V2_KINDS = {
    "invalid": "InvalidParameter",
    "not_found": "ResourceNotFound",
    "method": "MethodNotAllowed",
    "too_large": "RequestEntityTooLarge",
    "rate_limited": "RequestLimitExceeded",
    "internal": "InternalError",
}
# V1 errors are HTTP 200 with error_code (the SDK raises on that); 18 is its QPS limit, 336000 its
# generic "invalid argument" for a request it cannot route.
V1_KINDS = {
    "invalid": PARAM_INVALID,
    "not_found": NOT_FOUND,
    "method": NOT_FOUND,
    "too_large": PARAM_INVALID,
    "rate_limited": 18,
    "internal": INTERNAL,
}


def v2_kind_error(kind: str, message: str) -> JSONResponse:
    return qianfan_v2_error(KIND_STATUS[kind], V2_KINDS[kind], message)


def v1_kind_error(kind: str, message: str) -> JSONResponse:
    resp = qianfan_v1_error(V1_KINDS[kind], message)
    if kind in ("not_found", "method", "too_large"):
        resp.status_code = KIND_STATUS[kind]  # no route answered: not an API result the SDK should parse
    return resp


def storage_error(v1: bool, message: str) -> JSONResponse:
    if v1:
        return qianfan_v1_error(INTERNAL, message)  # V1 errors travel as HTTP 200 with a code
    return qianfan_v2_error(507, "InsufficientStorage", message)


def auth_failure(exc: AuthFailure) -> JSONResponse:
    # V1 and V2 alike: the SDK raises on any 401/403, and the header message drives its hints.
    return qianfan_v2_error(exc.status, exc.code, exc.message, exc.header_message)


def v2_invalid(rid: str, field: str, message: str) -> JSONResponse:
    return qianfan_v2_error(400, "InvalidParameter", f"param[{field}] invalid: {message}", req_id=rid)


def v2_failure(exc: Exception, rid: str) -> JSONResponse:
    """What a failed V2 action answers."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return v2_invalid(rid, ".".join(str(p) for p in err["loc"]), err["msg"])
    if isinstance(exc, InvalidParameter):
        return v2_invalid(rid, field_name(exc.field), exc.message)
    if isinstance(exc, NotFound):
        return qianfan_v2_error(404, "ResourceNotFound", exc.message, req_id=rid)
    if isinstance(exc, Conflict):
        return qianfan_v2_error(409, "InvalidState", exc.message, req_id=rid)
    if isinstance(exc, QuotaExceeded):
        return qianfan_v2_error(429, "QuotaLimitExceeded", exc.message, req_id=rid)
    if out_of_space(exc):
        log.warning("Qianfan V2 action failed: no space left on device")
        return qianfan_v2_error(507, "InsufficientStorage", NO_SPACE_MESSAGE, req_id=rid)
    log.exception("Qianfan V2 action failed", exc_info=exc)
    return qianfan_v2_error(500, "InternalError", "internal error", req_id=rid)


def v1_failure(exc: Exception) -> JSONResponse:
    """What a failed V1 call answers (HTTP 200 with the error code)."""
    if isinstance(exc, ValidationError):
        err = exc.errors()[0]
        return qianfan_v1_error(
            PARAM_INVALID, f"param invalid: {'.'.join(map(str, err['loc']))}: {err['msg']}"
        )
    if isinstance(exc, InvalidParameter):
        return qianfan_v1_error(
            PARAM_INVALID, f"param invalid: {field_name(exc.field, 'trainConfig', V1_FIELDS)}: {exc.message}"
        )
    if isinstance(exc, NotFound):
        return qianfan_v1_error(NOT_FOUND, exc.message)
    if isinstance(exc, Conflict):
        return qianfan_v1_error(PARAM_INVALID, exc.message)
    if isinstance(exc, QuotaExceeded):
        return qianfan_v1_error(REQUEST_LIMIT, exc.message)
    if out_of_space(exc):
        log.warning("Qianfan V1 call failed: no space left on device")
        return qianfan_v1_error(INTERNAL, NO_SPACE_MESSAGE)
    log.exception("Qianfan V1 call failed", exc_info=exc)
    return qianfan_v1_error(INTERNAL, "internal error")
