"""The OpenAPI description of the V2 infer request, for the routes that parse their bodies themselves.

The infer routes take the raw ``Request`` (tensors never pass through pydantic; see ``routes/v2.py``), so
FastAPI cannot derive a body schema for them. ``INFER_OPENAPI`` is given to their decorators as
``openapi_extra``: clients and API fuzzers (``tests/e2e/test_fuzz_gateway.py``) then see the body and headers
the routes accept. It documents, it does not validate: ``v2_codec`` is the only parser.
"""

from __future__ import annotations

from typing import Any

from tandem.common.datatypes import DATATYPES
from tandem.gateway.deadlines import TIMEOUT_HEADER
from tandem.gateway.v2_codec import HEADER_LENGTH_HEADER

_PARAMETERS: dict[str, Any] = {"type": "object", "additionalProperties": True}
_ELEMENT: dict[str, Any] = {"anyOf": [{"type": "number"}, {"type": "boolean"}, {"type": "string"}]}

INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _PARAMETERS,
        "inputs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": sorted(DATATYPES)},
                    "parameters": _PARAMETERS,
                    "data": {"type": "array", "items": {"anyOf": [_ELEMENT, {"type": "array"}]}},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string", "minLength": 1}, "parameters": _PARAMETERS},
            },
        },
    },
}

INFER_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": HEADER_LENGTH_HEADER,
            "in": "header",
            "required": False,
            "description": "Length of the JSON header when binary tensor data follows it.",
            "schema": {"type": "integer", "minimum": 0},
        },
        {
            "name": TIMEOUT_HEADER,
            "in": "header",
            "required": False,
            "description": "The request's deadline in milliseconds.",
            "schema": {"type": "number", "exclusiveMinimum": 0},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
"""``openapi_extra`` of the V2 infer routes: the infer body (JSON, or JSON then binary tensors) and headers."""
