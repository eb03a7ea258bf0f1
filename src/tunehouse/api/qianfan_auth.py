"""Resolves the account behind a BCE-signed request (Qianfan V1 and V2)."""

from __future__ import annotations

from fastapi import Depends, Request

from tunehouse.api import bce_auth
from tunehouse.api.context import AppContext, get_ctx
from tunehouse.api.edge import ORIGINAL_PATH
from tunehouse.api.rate_limit import count_request
from tunehouse.core.accounts import find_signing_secret


def qianfan_account(request: Request, ctx: AppContext = Depends(get_ctx)) -> int:
    found: dict[str, int] = {}

    def find_secret(ak: str) -> str | None:
        with ctx.db.session() as s:
            hit = find_signing_secret(s, ctx.box, ak)
        if hit is None:
            return None
        found["account"] = hit[0].id
        return hit[1]

    headers = {k.lower(): v for k, v in request.headers.items()}
    query = request.query_params.multi_items()
    # Clients sign the path they sent (`//v2/finetuning` from a base URL with a trailing slash); the
    # routers see it with duplicate slashes collapsed. Either form is the same request.
    sent = str(request.scope.get(ORIGINAL_PATH) or request.url.path)
    try:
        bce_auth.verify(request.method, sent, query, headers, find_secret)
    except bce_auth.AuthFailure as e:
        if sent == request.url.path or e.code != "SignatureDoesNotMatch":
            raise
        bce_auth.verify(request.method, request.url.path, query, headers, find_secret)
    count_request(request, found["account"])
    return found["account"]
