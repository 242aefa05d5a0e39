"""The OpenAPI document of the server, made from the pydantic models of ``protocol.py``.

The schemas are the models' own ``model_json_schema()``: the document cannot disagree with what
the server validates, and fields added to the models appear in it without an edit here. It is
built once per worker, on its first request, and served as bytes; ``/docs`` is a static page
that renders it with Swagger UI (loaded by the reader's browser, from a CDN). sanic-ext would
give the same two routes, but it wraps every request of every route in its own handlers,
while the server answers thousands of rollouts a second: docs/security.md has the measurement.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode

from rollout_server import __version__
from rollout_server.protocol import ErrorBody, RolloutRequest, RolloutResponse

__all__ = ["DOCS_HTML", "openapi_document"]

_REF = "#/components/schemas/{model}"

_ERRORS = {
    "400": "The body is not valid JSON (invalid_json)",
    "401": "ROLLOUT_API_KEY is set and the request has no matching Authorization: Bearer key",
    "403": "server_url or tool_server_url is outside TRAINER_URL_ALLOWLIST (url_not_allowed)",
    "409": "This rollout_id is running (rollout_running) or was used by another body (rollout_id_reused)",
    "413": "The body is larger than MAX_REQUEST_BODY_BYTES",
    "422": "A field is missing or invalid; error.fields names each one (validation_error)",
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": _REF.format(model=schema)}}},
    }


def _probe(description: str, content_type: str = "application/json") -> dict[str, Any]:
    return {
        "get": {
            "summary": description,
            "security": [],
            "responses": {"200": {"description": "OK", "content": {content_type: {}}}},
        }
    }


def _document() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    models: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
        (RolloutRequest, "validation"),
        (RolloutResponse, "serialization"),
        (ErrorBody, "serialization"),
    )
    for model, mode in models:
        schema = model.model_json_schema(ref_template=_REF, mode=mode)
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    responses = {"200": _json("RolloutResponse", "The rollout ran (status COMPLETED or ERROR)")}
    responses |= {status: _json("ErrorBody", text) for status, text in _ERRORS.items()}
    metrics = _probe("Prometheus metrics (behind METRICS_API_KEY when it is set)", "text/plain")
    metrics["get"]["security"] = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "rollout-server", "version": __version__},
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": {
            "/rollout": {
                "post": {
                    "summary": "Run one multi-turn rollout against the trainer at server_url",
                    "requestBody": {"required": True, **_json("RolloutRequest", "The rollout to run")},
                    "responses": responses,
                }
            },
            "/health": _probe("Liveness: the tokenize pool has live workers"),
            "/ready": _probe("Readiness: every tokenize worker holds the preloaded tokenizers"),
            "/metrics": metrics,
        },
    }


@functools.cache
def openapi_document() -> bytes:
    """The document as JSON bytes, built on the first call."""
    return json.dumps(_document(), separators=(",", ":")).encode()


DOCS_HTML = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>rollout-server API</title>
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
<noscript>The schema is at <a href="/openapi.json">/openapi.json</a>.</noscript>
<div id="swagger-ui"><p>Loading Swagger UI; the schema itself is at <a href="/openapi.json">/openapi.json</a>.</p></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body>
</html>
"""
