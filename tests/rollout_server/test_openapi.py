"""The OpenAPI document: made from the models (every declared field is in it, every reference
resolves), and served with the docs page by a real server without a key."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rollout_server.openapi import openapi_document
from rollout_server.protocol import (
    AlignmentReport,
    ErrorBody,
    ErrorDetail,
    ExtraFields,
    Message,
    RolloutRequest,
    RolloutResponse,
    RolloutTiming,
    SamplingParams,
)
from tests.conftest import Proc
from tests.rollout_server.guarded import guarded_server


def document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(openapi_document())
    return doc


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def test_every_model_field_is_in_the_schema() -> None:
    schemas = document()["components"]["schemas"]
    models = (RolloutRequest, RolloutResponse, Message, SamplingParams, ExtraFields, AlignmentReport)
    for model in (*models, RolloutTiming, ErrorBody, ErrorDetail):
        assert set(model.model_fields) <= set(schemas[model.__name__]["properties"]), model.__name__
    assert set(schemas["RolloutRequest"]["required"]) == {
        name for name, field in RolloutRequest.model_fields.items() if field.is_required()
    }


def test_every_reference_resolves() -> None:
    doc = document()
    found = set(refs(doc))
    assert "#/components/schemas/RolloutRequest" in found
    for ref in found:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        assert isinstance(node, dict)


def test_the_rollout_operation_lists_its_answers() -> None:
    operation = document()["paths"]["/rollout"]["post"]
    assert set(operation["responses"]) == {"200", "400", "401", "403", "409", "413", "422"}
    assert document()["paths"]["/health"]["get"]["security"] == []
    errors = [answer for status, answer in operation["responses"].items() if status != "200"]
    assert {answer["content"]["application/json"]["schema"]["$ref"] for answer in errors} == {
        "#/components/schemas/ErrorBody"
    }


def test_a_field_the_response_leaves_out_is_optional_and_never_null() -> None:
    schemas = document()["components"]["schemas"]
    extra, detail = schemas["ExtraFields"], schemas["ErrorDetail"]
    assert extra["required"] == ["alignment", "timing"] and detail["required"] == ["type", "message"]
    for schema, name in [(extra, "trajectory"), (extra, "http_status"), (detail, "fields")]:
        assert "anyOf" not in schema["properties"][name] and "default" not in schema["properties"][name]
    assert extra["properties"]["http_status"]["type"] == "integer"


@pytest.fixture(scope="module")
def guarded(start_server: Callable[..., Proc], sim: Proc) -> Proc:
    return guarded_server(start_server, sim)


def test_the_server_serves_the_document_and_the_docs_page_without_a_key(guarded: Proc) -> None:
    served = httpx.get(guarded.url + "/openapi.json", timeout=10)
    assert served.status_code == 200 and served.headers["content-type"] == "application/json"
    assert served.json() == document()
    page = httpx.get(guarded.url + "/docs", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'url: "/openapi.json"' in page.text
