"""Standard Webhooks signatures: `v1,` + base64 HMAC-SHA256 of `id.timestamp.body`.

Plain functions, so that the sender, the verifier in `kiln webhooks listen` and the tests share one
implementation of the spec (https://www.standardwebhooks.com/).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
DEFAULT_TOLERANCE_SECONDS = 300


class InvalidSignature(ValueError):
    """Raised when a delivery's headers, timestamp or signature do not verify."""


def generate_secret() -> str:
    """A new signing secret, shown to the tenant once: `whsec_` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def new_message_id() -> str:
    """The `webhook-id` of one event: stable across its retries and redeliveries."""
    return f"msg_{uuid.uuid4().hex}"


def secret_key(secret: str) -> bytes:
    """The HMAC key: the base64-decoded part after `whsec_` (the prefix is optional)."""
    raw = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSignature("the secret is not base64 after 'whsec_'") from None
    if not key:
        raise InvalidSignature("the secret is empty")
    return key


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers a delivery carries."""
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, body)}


def verify(secret: str, headers: Mapping[str, str], body: bytes, *, now: float,
           tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS) -> str:
    """Check a received delivery; returns its `webhook-id` or raises InvalidSignature.

    `headers` may use any case. The header may hold several space-separated signatures (as during
    a secret rotation); one matching `v1` signature is enough.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    header = lowered.get("webhook-signature")
    if not (message_id and timestamp and header):
        raise InvalidSignature("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise InvalidSignature(f"webhook-timestamp {timestamp!r} is not an integer") from None
    if abs(now - sent_at) > tolerance_seconds:
        raise InvalidSignature(f"webhook-timestamp is more than {tolerance_seconds:g}s from now")
    expected = sign(secret, message_id, sent_at, body).encode()
    for candidate in header.split():
        if hmac.compare_digest(candidate.encode(), expected):
            return message_id
    raise InvalidSignature("no signature matches")
