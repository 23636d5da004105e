"""`response_format` -> the engine's `GrammarSpec`, with OpenAI-shaped 400s for malformed values.

Shapes accepted (OpenAI's): `{"type": "text"}` (no constraint), `{"type": "json_object"}` (any JSON object),
`{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}`. Whether the schema's features
can be enforced is the grammar engine's call (engine.structured.compiler), made when the request is checked, so an
unsupported feature is a 400 naming it before anything is generated.
"""

from __future__ import annotations

import re
from typing import Any

from engine.structured.spec import GrammarSpec
from server.errors import BadRequestError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_SCHEMA_CHARS = 65536


def response_format_spec(rf: dict[str, Any] | None) -> GrammarSpec | None:
    if rf is None:
        return None
    if not isinstance(rf, dict):
        raise BadRequestError("response_format must be an object", param="response_format")
    kind = rf.get("type")
    if kind in (None, "text"):
        return None
    if kind == "json_object":
        return GrammarSpec.json_object()
    if kind == "json_schema":
        js = rf.get("json_schema")
        if not isinstance(js, dict):
            raise BadRequestError("response_format.json_schema must be an object with a 'name' and a 'schema'",
                                  param="response_format")
        name = js.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise BadRequestError("response_format.json_schema.name is required: 1-64 characters of a-z, A-Z, 0-9, "
                                  "_ or -", param="response_format")
        schema = js.get("schema", {})
        if not isinstance(schema, (dict, bool)):
            raise BadRequestError("response_format.json_schema.schema must be a JSON Schema object",
                                  param="response_format")
        spec = GrammarSpec.json_schema(schema)
        if len(spec.source) > MAX_SCHEMA_CHARS:
            raise BadRequestError(f"response_format.json_schema.schema is too large ({len(spec.source)} characters, "
                                  f"at most {MAX_SCHEMA_CHARS})", param="response_format")
        # NOTE: strict true or false, the output is held to the schema: a grammar engine has no "best effort" mode.
        return spec
    raise BadRequestError(f"response_format type {kind!r} is not supported (text, json_object, json_schema)",
                          param="response_format")
