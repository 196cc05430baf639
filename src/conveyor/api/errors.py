"""One mapping from Conveyor's error tree (and the API's own refusals) to HTTP.

Routes raise `ConveyorError`s from the facade or `ApiError` for HTTP-only refusals
(auth, tenant scope); nothing below a route picks a status code. Every error body has
the same shape (`ErrorBody`), documented once in the OpenAPI schema, so a client needs
one error parser:

    {"error": "JobNotFound", "message": "no job with id ...", "errors": []}

Validation failures (422) list each problem as `{"field", "location", "reason"}`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from ..errors import (
    ConfigError,
    ConveyorError,
    EngineUnavailable,
    InvalidArgument,
    InvalidJob,
    InvalidPayload,
    InvalidState,
    JobNotFound,
    MalformedJob,
    PayloadTooLarge,
    UnknownTask,
)

log = logging.getLogger("conveyor.api")

# Seconds a client should wait before retrying after a 503: long enough for a Redis
# failover or a restarted SQLite holder, short enough not to stall an incident poller.
RETRY_AFTER_SECONDS = 2

# Most specific first: the first `isinstance` match wins (PayloadTooLarge is an InvalidJob).
STATUS_BY_ERROR: tuple[tuple[type[ConveyorError], int], ...] = (
    (JobNotFound, 404),
    (InvalidState, 409),
    (PayloadTooLarge, 413),
    (InvalidJob, 422),
    (InvalidArgument, 422),
    (EngineUnavailable, 503),
    (MalformedJob, 500),
    (ConfigError, 500),
)

# The request field a producer error is about, when the error type says it, and the
# reason to show (None: the error's own message, which already names the fix).
_FIELD_BY_ERROR: tuple[tuple[type[InvalidJob], str, str | None], ...] = (
    (
        UnknownTask,
        "queue",
        'this API process does not know the task: pass "queue" to enqueue it for a '
        "worker that has it",
    ),
    (PayloadTooLarge, "payload", None),
    (InvalidPayload, "payload", None),
)


class FieldError(BaseModel):
    """One problem with one request field."""

    field: str | None = Field(
        description="the field, e.g. `priority` or `payload.items`; null when the problem "
        "is not about one field (a body that is not JSON)"
    )
    location: str = Field(description="`body`, `query`, `path` or `header`")
    reason: str = Field(description="what is wrong and how to fix it")
    position: int | None = Field(
        default=None, description="character offset in the body where JSON decoding stopped"
    )


class ErrorBody(BaseModel):
    """Every error response of the API."""

    error: str = Field(description="error type, e.g. `JobNotFound`, `ValidationError`")
    message: str = Field(description="what happened, in words a person can act on")
    errors: list[FieldError] = Field(
        default_factory=list, description="per-field problems (validation errors)"
    )


class ApiError(Exception):
    """An HTTP-level refusal raised by a route or dependency (auth, tenant scope).

    Args:
        status: the HTTP status code.
        error: a short type name for `ErrorBody.error`.
        message: the human-readable explanation.
        headers: extra response headers (e.g. `WWW-Authenticate`).
        errors: per-field problems, for a 422 the facade could not see.
    """

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[FieldError] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.headers = dict(headers or {})
        self.errors = list(errors)

    @classmethod
    def invalid(cls, field: str, reason: str, location: str = "body") -> ApiError:
        """A 422 about one request field."""
        return cls(
            422,
            "ValidationError",
            f"{field}: {reason}",
            errors=[FieldError(field=field, location=location, reason=reason)],
        )


def _doc(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


# Declared on every router so the schema documents the one error shape (and so schema
# checks accept our 422 body instead of FastAPI's default `HTTPValidationError`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _doc("The body could not be read (e.g. not UTF-8)"),
    401: _doc("Missing or invalid bearer token"),
    403: _doc("The token may not do this"),
    404: _doc("No such job (or not visible to this token's tenant)"),
    422: _doc("Invalid request: see `errors` for each field"),
    503: _doc("The engine is unavailable; retry after `Retry-After` seconds"),
}
# Operations whose lifecycle rule refuses some states (the message says which).
STATE_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: _doc("The operation does not apply to that state (lifecycle's rule)")
}


def json_response(
    data: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON response encoded with orjson (what every route returns)."""
    return Response(
        orjson.dumps(data), status_code=status_code, headers=headers, media_type="application/json"
    )


def error_response(
    status: int,
    error: str,
    message: str,
    errors: Sequence[FieldError] = (),
    headers: Mapping[str, str] | None = None,
) -> Response:
    """An `ErrorBody` response."""
    body = ErrorBody(error=error, message=message, errors=list(errors))
    return json_response(body.model_dump(), status, headers)


def status_for(exc: ConveyorError) -> int:
    """The HTTP status of a Conveyor error (500 for anything unmapped)."""
    for kind, status in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return 500


def conveyor_error_response(exc: ConveyorError) -> Response:
    """Render a Conveyor error: status from `STATUS_BY_ERROR`, field when known."""
    status = status_for(exc)
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    errors = [
        FieldError(field=field, location="body", reason=reason or str(exc))
        for kind, field, reason in _FIELD_BY_ERROR
        if isinstance(exc, kind)
    ][:1]
    if isinstance(exc, InvalidPayload) and exc.fields:  # a typed payload: name each field
        errors = [
            FieldError(field=f"payload.{path}", location="body", reason=reason)
            for path, reason in exc.fields.items()
        ]
    if status == 500:
        log.error("request failed: %s: %s", type(exc).__name__, exc)
    return error_response(status, type(exc).__name__, str(exc), errors, headers)


def _field_errors(exc: RequestValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors():
        loc = [str(part) for part in err.get("loc", ())]
        location = loc[0] if loc else "body"
        if err.get("type") == "json_invalid":
            # FastAPI puts the character offset where a field name goes ("body.42"):
            # report it as a position in a body that is not JSON, not as a field.
            raw = err.get("loc", ())[-1] if len(loc) > 1 else None
            position = raw if isinstance(raw, int) else None
            detail = str((err.get("ctx") or {}).get("error") or "JSON decode error")
            where = f" at character {position}" if position is not None else ""
            reason = f"the body is not valid JSON: {detail}{where}"
            out.append(FieldError(field=None, location=location, reason=reason, position=position))
            continue
        field = ".".join(loc[1:]) or location
        out.append(FieldError(field=field, location=location, reason=str(err.get("msg"))))
    return out


def install_error_handlers(api: FastAPI) -> None:
    """Register the handlers that render every error as an `ErrorBody`."""

    async def on_conveyor_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ConveyorError)
        return conveyor_error_response(exc)

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc.status, exc.error, exc.message, exc.errors, exc.headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = _field_errors(exc)
        summary = "; ".join(f"{e.field}: {e.reason}" if e.field else e.reason for e in errors[:5])
        return error_response(422, "ValidationError", f"invalid request: {summary}", errors)

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        name = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed"}.get(
            exc.status_code, "HTTPError"
        )
        return error_response(exc.status_code, name, str(exc.detail), headers=exc.headers)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return error_response(500, "InternalError", "unexpected server error (logged)")

    api.add_exception_handler(ConveyorError, on_conveyor_error)
    api.add_exception_handler(ApiError, on_api_error)
    api.add_exception_handler(RequestValidationError, on_validation_error)
    api.add_exception_handler(StarletteHTTPException, on_http_error)
    api.add_exception_handler(Exception, on_unexpected)
