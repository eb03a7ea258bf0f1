"""Encryption of stored secrets (BCE signing needs the secret key back, so it cannot be hashed)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.fernet import Fernet


def load_master_key(path: Path) -> bytes:
    """TUNEHOUSE_MASTER_KEY wins (share it between replicas); else a key file created once in the home."""
    env = os.environ.get("TUNEHOUSE_MASTER_KEY")
    if env:
        return env.encode()
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key()
    # O_EXCL: two processes starting together must not each write a different key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


class SecretBox:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    def seal(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        return self._fernet.decrypt(sealed.encode()).decode()
