"""Payloads and results as strict JSON, and typed payloads (pydantic models).

Strict both ways: what is stored is exactly what was given, or the call fails with a
named error. orjson writes datetimes, non-string keys and dataclasses if asked to; the
options here make it refuse them instead (a datetime would come back as a string, the
key 1 as "1"). orjson has no option that refuses NaN and Infinity (it writes `null`),
so output that contains `null` and does not read back equal to the value is checked
once more by the standard encoder with `allow_nan=False`; output without `null` cannot
hide one.

A task may declare a pydantic model for its payload, with `@app.task(payload=Model)` or
by annotating its handler's argument `Job[Model]`. Producers pass a dict or a model
instance; either is validated at enqueue (`InvalidPayload` names the field) and stored
as the model's JSON. The worker validates the stored JSON again and hands the handler
a `Job` whose `payload` is the model instance. A handler may return a model: it is
stored as its JSON.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from .errors import ConfigError, InvalidPayload, InvalidResult

# Refuse what JSON cannot represent as given, instead of converting it silently.
STRICT = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

_HINTS = (
    ("datetime", "send an ISO string (value.isoformat()) or epoch seconds"),
    ("date", "send an ISO string (value.isoformat())"),
    ("time", "send an ISO string (value.isoformat())"),
    ("Dict key must be str", "use string keys"),
    ("set", "send a list"),
    ("bytes", "send text, or base64 of the bytes"),
    ("64-bit", "send a string"),
)


def strict_dumps(value: Any) -> bytes:
    """Encode `value` as JSON, refusing anything JSON cannot carry unchanged.

    Returns:
        The JSON bytes.

    Raises:
        ValueError: the value holds something that is not JSON (NaN, a datetime, a set,
            a non-string key, ...); the message says what and how to send it instead.
    """
    try:
        raw = orjson.dumps(value, option=STRICT)
    except TypeError as exc:
        reason = str(exc)
        hint = next((fix for word, fix in _HINTS if word in reason), None)
        raise ValueError(f"{reason}{f': {hint}' if hint else ''}") from None
    # Cheap first: a value that reads back equal holds no NaN (NaN reads back as None).
    # Tuples, enums and UUIDs also read back different, so the standard encoder decides.
    if b"null" in raw and orjson.loads(raw) != value:
        try:
            # `default=str` only lets through what orjson already accepted (UUID, enum).
            json.dumps(value, allow_nan=False, default=str)
        except ValueError:
            raise ValueError(
                "NaN or Infinity is not JSON (it would be stored as null): send null, a "
                "string, or a finite number"
            ) from None
    return raw


def payload_json(payload: Any, model: type[BaseModel] | None) -> Any:
    """The JSON value to store for `payload`: a model instance or a mapping checked
    against the task's `model` (when it has one), else the mapping as given.

    Raises:
        InvalidPayload: the payload does not fit the model; `fields` maps each bad
            field to what is wrong.
    """
    if model is not None and not isinstance(payload, model):
        if isinstance(payload, BaseModel):
            payload = payload.model_dump()
        try:
            payload = model.model_validate(payload)
        except ValidationError as exc:
            raise invalid_payload(exc, model) from None
    if isinstance(payload, BaseModel):
        return payload.model_dump(mode="json")
    return payload


def invalid_payload(exc: ValidationError, model: type[BaseModel]) -> InvalidPayload:
    """An `InvalidPayload` naming each field pydantic refused."""
    fields: dict[str, str] = {}
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(payload)"
        fields.setdefault(path, err["msg"])
    listed = "; ".join(f"{path}: {msg}" for path, msg in list(fields.items())[:5])
    return InvalidPayload(
        f"payload does not match {model.__name__} ({listed}): fix the field(s) named",
        fields=fields,
    )


def result_json(result: Any) -> str:
    """Encode a handler's return value (a model is stored as its JSON).

    Raises:
        InvalidResult: the value is not JSON; the message says what was wrong.
    """
    if result is None:  # most handlers: skip the encoders
        return "null"
    if isinstance(result, BaseModel):
        result = result.model_dump(mode="json")
    try:
        return strict_dumps(result).decode()
    except ValueError as exc:
        raise InvalidResult(
            f"the handler returned {type(result).__name__}, which is not JSON ({exc}): "
            "return dicts, lists, strings, numbers, booleans, None or a pydantic model"
        ) from None


def payload_model(fn: Callable[..., Any], declared: Any, job_type: type) -> type[BaseModel] | None:
    """The task's payload model: `declared` (`payload=` of `@app.task`), else the `T` of a
    `Job[T]` annotation on the handler's first parameter, else None (untyped).

    Raises:
        ConfigError: `declared` is not a pydantic model, or it disagrees with the
            annotation.
    """
    annotated = _annotated_model(fn, job_type)
    if declared is None:
        return annotated
    if not (isinstance(declared, type) and issubclass(declared, BaseModel)):
        raise ConfigError(
            f"payload={declared!r} is not a pydantic model: pass a BaseModel subclass"
        )
    if annotated is not None and annotated is not declared:
        raise ConfigError(
            f"payload={declared.__name__} disagrees with the handler's Job[{annotated.__name__}]"
            " annotation: declare one model"
        )
    return declared


def _annotated_model(fn: Callable[..., Any], job_type: type) -> type[BaseModel] | None:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # forward references the module cannot resolve: treat as untyped
        return None
    hint = hints.get(params[0].name)
    if typing.get_origin(hint) is not job_type:
        return None
    args = typing.get_args(hint)
    model = args[0] if args else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return None


def decode_payload(payload: Mapping[str, Any], model: type[BaseModel]) -> BaseModel:
    """The stored payload as the task's model (in the worker).

    Raises:
        InvalidPayload: the stored JSON does not fit the model (enqueued without it).
    """
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise invalid_payload(exc, model) from None
