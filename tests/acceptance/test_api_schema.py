"""Property-based checks of the served OpenAPI schema (schemathesis): for generated valid
and invalid requests to every operation, no 5xx, and every response's status, content
type, headers and body conform to what the schema documents.

Bounded to stay quick: 20 examples per operation, no deadline (the engine does real I/O).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from conveyor.api import create_api
from tests.acceptance.test_api import ROOT, ApiServer
from tests.acceptance.test_api_auth import ADMIN, TOKENS
from tests.apps.probe import probe_app

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One API for every generated request: state left by one case is input for the next."""
    url = f"sqlite:///{tmp_path_factory.mktemp('schema') / 'conveyor.db'}"
    server = ApiServer(
        create_api(probe_app(url), tokens=TOKENS, metrics_prefix="conveyor_", owns_app=True)
    ).start()
    yield server
    server.stop()


# The checked-in schema, which `test_api.py` proves equal to the served one. (Loading it
# from the live server through `schemathesis.pytest.from_fixture` would be the natural
# way, but schemathesis 4.32's lazy loader reads `node._nodeid`, which pytest 9 removed.)
schema = schemathesis.openapi.from_path(str(ROOT / "docs" / "openapi.json"))


# Framing headers are the HTTP server's to judge: uvicorn answers a generated
# `content-length: U"vb` with 400 before the app sees the request, on any route.
SERVER_HEADERS = frozenset({"content-length", "transfer-encoding", "host", "connection"})


def call(case: schemathesis.Case[Any], served: ApiServer, token: str) -> None:
    for name in [h for h in case.headers or {} if h.lower() in SERVER_HEADERS]:
        del case.headers[name]
    case.call_and_validate(
        base_url=served.url, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS
    )


@schema.parametrize()
@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_conforms_to_the_schema(
    served: ApiServer, case: schemathesis.Case[Any]
) -> None:
    call(case, served, ADMIN)


@schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_tenant_token_responses_conform_too(
    served: ApiServer, case: schemathesis.Case[Any]
) -> None:
    tenant = next(token for token in TOKENS.tenants)
    call(case, served, tenant)
