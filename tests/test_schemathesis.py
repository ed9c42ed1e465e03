"""Property-based requests generated from the OpenAPI schema: no input may cause a 5xx,
and answers match the documented response schemas. Bounded to a few examples per operation."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from pydantic import SecretStr
from schemathesis.checks import (
    content_type_conformance,
    missing_required_header,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from test_service_api import settings_for

from synthgen.service.api import create_app


@pytest.fixture
def api_schema(tmp_path_factory):
    app = create_app(settings_for(tmp_path_factory.mktemp("schemathesis"), max_request_bytes=200_000,
                                  api_keys=[SecretStr(KEY)]))
    return schemathesis.openapi.from_asgi("/v1/openapi.json", app)


KEY = "schemathesis-key"
schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=8, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_api_never_errors(case):
    # No 5xx, and every answer is documented (status code, content type, body schema).
    # Left out: the checks about how loosely a framework may accept odd input (a repeated
    # query parameter, Starlette's 405 `Allow` listing one route's methods).
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}"}, checks=[
        not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
        missing_required_header])
