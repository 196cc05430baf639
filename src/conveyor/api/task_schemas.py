"""The payload schema of each typed task in the OpenAPI document.

FastAPI documents `POST /jobs` from `EnqueueRequest`, whose payload is any JSON object.
For an app whose tasks declare payload models (`conveyor.payloads`), the request body
becomes "one of": per typed task, `EnqueueRequest` with `task` fixed to its name and
`payload` referring to its model (under `components/schemas`), or the plain request for
every other task. Generated clients and `/docs` then show each task's fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI

if TYPE_CHECKING:
    from ..app import Conveyor

_REF = "#/components/schemas/{model}"


def install_task_schemas(api: FastAPI, app: Conveyor) -> None:
    """Make `api.openapi()` add the payload schemas of `app`'s typed tasks (computed on
    first request, so tasks registered after `create_api` are included)."""
    base: Callable[[], dict[str, Any]] = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = add_task_schemas(base(), app)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def add_task_schemas(schema: dict[str, Any], app: Conveyor) -> dict[str, Any]:
    """`schema` with each typed task's payload model in it (see the module docstring).

    Args:
        schema: the OpenAPI document FastAPI built.
        app: the app whose tasks are documented.

    Returns:
        The same document, changed in place.
    """
    typed = sorted((t for t in app.tasks.values() if t.payload_model), key=lambda t: t.name)
    if not typed:
        return schema
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    variants: list[dict[str, Any]] = []
    for task in typed:
        model = task.payload_model
        assert model is not None
        doc = model.model_json_schema(ref_template=_REF)
        components.update(doc.pop("$defs", {}))
        components[model.__name__] = doc
        variants.append(
            {
                "title": f"enqueue {task.name}",
                "allOf": [
                    {"$ref": _REF.format(model="EnqueueRequest")},
                    {
                        "type": "object",
                        "properties": {
                            "task": {"const": task.name},
                            "payload": {"$ref": _REF.format(model=model.__name__)},
                        },
                    },
                ],
            }
        )
    body = schema["paths"]["/jobs"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = {"anyOf": [*variants, {"$ref": _REF.format(model="EnqueueRequest")}]}
    return schema
