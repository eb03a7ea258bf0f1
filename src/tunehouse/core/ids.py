"""Canonical keys: 12 lowercase alphanumerics, rendered with a prefix per dialect (job-, task-, file-…)."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_lowercase + string.digits
KEY_LEN = 12


def new_key() -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(KEY_LEN))


def strip_prefix(ident: str, prefix: str) -> str | None:
    """`job-abc…` → `abc…`; None when the id does not have this prefix and a well-formed key."""
    if not ident.startswith(prefix):
        return None
    key = ident[len(prefix) :]
    if len(key) != KEY_LEN or any(c not in _ALPHABET for c in key):
        return None
    return key
