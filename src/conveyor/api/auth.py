"""Bearer-token auth: one admin token, and tenant tokens scoped to one tenant each.

Tokens come from the validated settings (`CONVEYOR_API_ADMIN_TOKEN`,
`CONVEYOR_API_TENANT_TOKENS="token1:acme,token2:globex"`) and/or a JSON file
(`CONVEYOR_API_TOKENS_FILE` or `conveyor api --tokens-file`):

    {"admin": "…", "tenants": {"<token>": "acme", "<token>": "globex"}}

A tenant token in the file may also be limited to some queues and tasks (either list
optional; absent means all):

    {"tenants": {"<token>": {"tenant": "acme", "queues": ["emails"], "tasks": ["send"]}}}

Such a token cannot enqueue, list or watch anything else (403), and jobs of other
queues or tasks answer 404 as another tenant's do.

The file is the better home for secrets: flags show up in `ps`, and environment
variables in crash dumps. With no token configured at all the API is open (every
caller is admin); `conveyor api` refuses to do that on a non-loopback address unless
`--insecure` is given.

A tenant token sees only its tenant: another tenant's job answers 404 exactly as a
missing one does, so ids cannot be probed; queue-wide operations and admin documents
answer 403.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import ConfigError
from ..settings import Settings
from .errors import ApiError

# Shorter tokens are guessable online; 16 characters of `secrets.token_urlsafe` is
# already 96 bits.
MIN_TOKEN_LENGTH = 16
REALM = 'Bearer realm="conveyor"'


@dataclass(frozen=True, slots=True)
class Scope:
    """What a tenant token is limited to, besides its tenant (None: no limit)."""

    queues: frozenset[str] | None = None
    tasks: frozenset[str] | None = None


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an admin (`tenant is None`) or one tenant, optionally limited to
    some queues and tasks."""

    tenant: str | None
    queues: frozenset[str] | None = None
    tasks: frozenset[str] | None = None

    @property
    def admin(self) -> bool:
        return self.tenant is None

    def may_use_queue(self, queue: str) -> bool:
        """Whether this caller's scope includes `queue`."""
        return self.queues is None or queue in self.queues

    def may_use_task(self, task: str) -> bool:
        """Whether this caller's scope includes `task`."""
        return self.tasks is None or task in self.tasks

    def sees(self, tenant: str | None, queue: str, task: str) -> bool:
        """Whether a job (or event) of `tenant`, `queue` and `task` is visible."""
        if self.admin:
            return True
        return tenant == self.tenant and self.may_use_queue(queue) and self.may_use_task(task)


ADMIN = Principal(tenant=None)


@dataclass(frozen=True)
class Tokens:
    """The configured bearer tokens.

    Args:
        admin: the token with full access, if any.
        tenants: token -> tenant name.
        scopes: token -> the queues and tasks a tenant token is limited to (tokens
            absent here are not limited).
    """

    admin: str | None = None
    tenants: Mapping[str, str] = field(default_factory=dict)
    scopes: Mapping[str, Scope] = field(default_factory=dict)

    @property
    def enabled(self) -> bool:
        """True when any token is configured (otherwise the API is open)."""
        return bool(self.admin or self.tenants)

    def identify(self, token: str) -> Principal | None:
        """The principal `token` belongs to, or None.

        Every configured token is compared, in constant time, whether or not an earlier
        one matched: the response time must not reveal how much of a token was right,
        nor which entry matched.
        """
        given = token.encode()
        found: Principal | None = None
        if self.admin is not None and hmac.compare_digest(given, self.admin.encode()):
            found = ADMIN
        for candidate, tenant in self.tenants.items():
            if hmac.compare_digest(given, candidate.encode()) and found is None:
                scope = self.scopes.get(candidate, Scope())
                found = Principal(tenant=tenant, queues=scope.queues, tasks=scope.tasks)
        return found

    @classmethod
    def load(cls, settings: Settings, tokens_file: str | None = None) -> Tokens:
        """Build the token set from settings and an optional JSON file.

        Args:
            settings: supplies `api_admin_token`, `api_tenant_tokens`, `api_tokens_file`.
            tokens_file: overrides `settings.api_tokens_file` (the CLI flag).

        Raises:
            ConfigError: a token is too short, malformed, unreadable, or used twice.
        """
        admin = settings.api_admin_token
        tenants: dict[str, str] = {}
        if settings.api_tenant_tokens:
            tenants.update(_parse_pairs(settings.api_tenant_tokens))
        scopes: dict[str, Scope] = {}
        path = tokens_file or settings.api_tokens_file
        if path:
            file_admin, file_tenants, scopes = _read_file(path)
            admin = admin or file_admin
            for token, tenant in file_tenants.items():
                if tenants.get(token, tenant) != tenant:
                    raise ConfigError(f"a tenant token is mapped to two tenants in {path}")
                tenants[token] = tenant
        for token in [admin, *tenants] if admin else list(tenants):
            if len(token) < MIN_TOKEN_LENGTH:
                raise ConfigError(
                    f"an API token is shorter than {MIN_TOKEN_LENGTH} characters: generate "
                    "one with `python -c 'import secrets; print(secrets.token_urlsafe(24))'`"
                )
        if admin is not None and admin in tenants:
            raise ConfigError("the admin token is also a tenant token: use different tokens")
        return cls(admin=admin, tenants=tenants, scopes=scopes)


def _parse_pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        token, sep, tenant = item.partition(":")
        if not sep or not token or not tenant:
            raise ConfigError(
                "CONVEYOR_API_TENANT_TOKENS must look like 'token1:acme,token2:globex' "
                "(the tenant after the first ':')"
            )
        if out.get(token, tenant) != tenant:
            raise ConfigError("CONVEYOR_API_TENANT_TOKENS maps one token to two tenants")
        out[token] = tenant
    return out


def _read_file(path: str) -> tuple[str | None, dict[str, str], dict[str, Scope]]:
    try:
        doc: Any = orjson.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ConfigError(f"cannot read API tokens file {path}: {exc.strerror}") from exc
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"API tokens file {path} is not JSON: {exc}") from exc
    shape = ConfigError(
        f'API tokens file {path} must be {{"admin": "<token>", "tenants": {{"<token>": '
        '"<tenant>" or {"tenant": "<tenant>", "queues": [...], "tasks": [...]}}} (every key '
        "but tenant optional)"
    )
    admin = doc.get("admin") if isinstance(doc, dict) else None
    entries = doc.get("tenants", {}) if isinstance(doc, dict) else None
    if not isinstance(entries, dict) or not (admin is None or isinstance(admin, str)):
        raise shape
    tenants: dict[str, str] = {}
    scopes: dict[str, Scope] = {}
    for token, entry in entries.items():
        if isinstance(entry, dict):
            if set(entry) - {"tenant", "queues", "tasks"}:
                raise shape
            queues, tasks = _names(entry.get("queues"), shape), _names(entry.get("tasks"), shape)
            scopes[token] = Scope(queues=queues, tasks=tasks)
            entry = entry.get("tenant")
        if not isinstance(token, str) or not isinstance(entry, str) or not entry:
            raise shape
        tenants[token] = entry
    return admin, tenants, scopes


def _names(value: Any, error: ConfigError) -> frozenset[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise error
    return frozenset(value)


# auto_error=False: we answer 401 ourselves, with `WWW-Authenticate` and our error body.
bearer = HTTPBearer(
    auto_error=False,
    description="An admin token, or a tenant token that sees only its tenant's jobs.",
)


def authenticate(tokens: Tokens, token: str | None) -> Principal:
    """The principal for a presented token (HTTP and WebSocket share this).

    Raises:
        ApiError: 401 when tokens are configured and `token` is missing or unknown.
    """
    if not tokens.enabled:
        return ADMIN
    if not token:
        raise ApiError(
            401,
            "Unauthorized",
            "missing bearer token: send `Authorization: Bearer <token>`",
            {"WWW-Authenticate": REALM},
        )
    principal = tokens.identify(token)
    if principal is None:
        raise ApiError(
            401,
            "Unauthorized",
            "invalid bearer token",
            {"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    return principal


async def current_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """Dependency: who is calling (401 when a token is needed and missing or wrong)."""
    token = credentials.credentials if credentials is not None else None
    # The API's state (`api.state.ApiState`) is read without importing that module:
    # it names `Tokens` from here, and the two would depend on each other.
    tokens: Tokens = request.app.state.conveyor.tokens
    return authenticate(tokens, token)


async def admin_principal(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    """Dependency: only the admin token (403 for tenant tokens)."""
    if not principal.admin:
        raise ApiError(403, "Forbidden", "this endpoint needs the admin token")
    return principal


def scoped_tenant(principal: Principal, requested: str | None) -> str | None:
    """The tenant a request acts for: a tenant token's own, whatever it asked.

    Raises:
        ApiError: 403 when a tenant token names another tenant.
    """
    if principal.admin:
        return requested
    if requested is not None and requested != principal.tenant:
        raise ApiError(403, "Forbidden", "a tenant token can only act for its own tenant")
    return principal.tenant


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
AdminPrincipal = Annotated[Principal, Depends(admin_principal)]
