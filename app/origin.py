"""Who and where a change comes from: the actor, the request id and the client's address.

Set once per request (`app.api.requests`) or per CLI command
(`app.cli.base`) in a context variable, so that the audit rows written deep in the services
(`app.services.audit`) and the log lines (`app.logs`) carry them without being handed them.
"""

from __future__ import annotations

import getpass
import uuid
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace


@dataclass(frozen=True, slots=True)
class Origin:
    actor: str | None = None  # an API key's prefix, `cli:<os user>`, or None (the system)
    request_id: str | None = None
    client_ip: str | None = None
    tenant_id: str | None = None  # the authenticated caller's tenant (logs only)


_ORIGIN: ContextVar[Origin] = ContextVar("kiln_origin", default=Origin())  # noqa: B039 - frozen


def current() -> Origin:
    return _ORIGIN.get()


def set_origin(**changes: str | None) -> Token[Origin]:
    """Change some fields of the current origin; `reset` with the token undoes it."""
    return _ORIGIN.set(replace(_ORIGIN.get(), **changes))


def reset(token: Token[Origin]) -> None:
    _ORIGIN.reset(token)


def cli_actor() -> str:
    """The actor of an operator's command: `cli:` and the OS user running it."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (some containers)
        user = "unknown"
    return f"cli:{user}"


def new_request_id() -> str:
    return uuid.uuid4().hex
