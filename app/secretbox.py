"""Encryption of the secrets Kiln must read back (webhook signing secrets), never of API keys.

The key comes from `KILN_SECRET_KEY` (any high-entropy string; several comma-separated ones let
old ciphertexts decrypt while new ones use the first). Unset, a key is generated once into
`$KILN_HOME/secret.key` (mode 600), which every process sharing that home reads.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from app.settings import Settings

KEY_FILE = "secret.key"


class SecretBox:
    """Fernet (AES-128-CBC + HMAC-SHA256) over stored secrets."""

    def __init__(self, keys: list[str]):
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(_fernet_key(k)) for k in keys])

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        if settings.secret_key:
            return cls([k.strip() for k in settings.secret_key.split(",") if k.strip()])
        return cls([load_or_create_key(settings.home / KEY_FILE)])

    def encrypt(self, plain: str) -> str:
        return self._fernet.encrypt(plain.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise ValueError("a stored secret cannot be decrypted: KILN_SECRET_KEY (or $KILN_HOME/"
                             "secret.key) differs from the one that encrypted it") from None


def _fernet_key(key: str) -> bytes:
    """Any string becomes a Fernet key, so operators need not produce Fernet's exact format."""
    return base64.urlsafe_b64encode(hashlib.sha256(b"kiln-secret-box\0" + key.encode()).digest())


def load_or_create_key(path: Path) -> str:
    """Read the key file, creating it atomically (mode 600) when the first process needs it."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(32) + "\n")
    try:
        os.link(temporary, path)  # fails if another process won the race; readers never see half
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_text().strip()
