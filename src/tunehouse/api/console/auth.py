"""Console sign-in: a signed, httpOnly session cookie bound to an API key, and CSRF tokens for every form."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import HTTPException, Request, Response
from itsdangerous import BadSignature, URLSafeTimedSerializer

from tunehouse.api.context import AppContext, ctx_of
from tunehouse.core import accounts
from tunehouse.core.secrets_box import load_master_key

COOKIE = "tunehouse_console"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# A console left open on a second screen should not sign out every evening.
MAX_AGE_S = 7 * 24 * 3600


@dataclass
class ConsoleSession:
    csrf: str
    account_id: int | None = None
    credential_id: int | None = None
    account_name: str = ""
    # True when the cookie must be (re)written on the response.
    fresh: bool = False

    @property
    def signed_in(self) -> bool:
        return self.account_id is not None


def _serializer(request: Request) -> URLSafeTimedSerializer:
    cached = getattr(request.app.state, "console_serializer", None)
    if cached is None:
        ctx = ctx_of(request)
        # Derived from the master key: shared by replicas that share the key, never a constant in the code.
        master = load_master_key(ctx.settings.master_key_path)
        secret = hmac.new(master, b"tunehouse console session v1", hashlib.sha256).digest()
        cached = URLSafeTimedSerializer(secret, salt="tunehouse-console")
        request.app.state.console_serializer = cached
    return cached


def _anonymous() -> ConsoleSession:
    return ConsoleSession(csrf=secrets.token_urlsafe(24), fresh=True)


def load_session(request: Request, ctx: AppContext) -> ConsoleSession:
    """The request's session; anonymous when the cookie is missing, forged, expired or its key revoked."""
    raw = request.cookies.get(COOKIE)
    if not raw:
        return _anonymous()
    try:
        data: dict[str, Any] = _serializer(request).loads(raw, max_age=MAX_AGE_S)
    except BadSignature:
        return _anonymous()
    csrf = str(data.get("csrf") or "")
    if not csrf:
        return _anonymous()
    account_id, cred_id = data.get("acc"), data.get("cred")
    if not isinstance(account_id, int) or not isinstance(cred_id, int):
        return ConsoleSession(csrf=csrf)
    with ctx.db.session() as s:
        try:
            cred = accounts.get_credential(s, account_id, cred_id)
            name = accounts.get_account(s, account_id).name
        except Exception:  # noqa: BLE001 - any lookup failure means: not signed in
            return _anonymous()
        if cred.revoked_at is not None:
            # Revoking the key a session was opened with ends that session.
            return _anonymous()
    return ConsoleSession(csrf=csrf, account_id=account_id, credential_id=cred_id, account_name=name)


def save_session(request: Request, response: Response, session: ConsoleSession) -> None:
    data: dict[str, Any] = {"csrf": session.csrf}
    if session.signed_in:
        data.update(acc=session.account_id, cred=session.credential_id)
    response.set_cookie(
        COOKIE,
        _serializer(request).dumps(data),
        max_age=MAX_AGE_S,
        path="/console",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )


def sign_in(api_key: str, ctx: AppContext) -> ConsoleSession | None:
    with ctx.db.session() as s:
        cred = accounts.find_api_key_credential(s, api_key.strip())
        if cred is None:
            return None
        name = accounts.get_account(s, cred.account_id).name
        # A new CSRF token at sign-in: a token planted before sign-in is worthless afterwards.
        return ConsoleSession(
            csrf=secrets.token_urlsafe(24),
            account_id=cred.account_id,
            credential_id=cred.id,
            account_name=name,
            fresh=True,
        )


def safe_next(target: str | None) -> str:
    """Only console paths on this site: `next=` must not become an open redirect."""
    if not target:
        return "/console"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/console") or "\\" in target:
        return "/console"
    return target


def login_redirect(request: Request) -> HTTPException:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return HTTPException(status_code=303, headers={"Location": f"/console/login?next={quote(target)}"})


def same_origin(request: Request) -> bool:
    """Browsers send Origin on POSTs; when present it must be this site (defence in depth beside tokens)."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    host = request.headers.get("host", "")
    return urlsplit(origin).netloc == host


async def check_csrf(request: Request, session: ConsoleSession) -> None:
    """Every state-changing request carries the session's token, in the form or in a header."""
    sent = request.headers.get(CSRF_HEADER)
    if sent is None:
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not same_origin(request) or not sent or not hmac.compare_digest(sent, session.csrf):
        raise HTTPException(status_code=403, detail="CSRF check failed: reload the page and try again")
