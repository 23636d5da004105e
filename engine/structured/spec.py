"""What a request asks the grammar engine to enforce: a small hashable value carried on `SamplingParams`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

KINDS = ("json_schema", "json_object", "regex", "lark")


@dataclass(frozen=True)
class GrammarSpec:
    """`kind` is one of KINDS; `source` is the schema as canonical JSON text (json_schema), a regex or a Lark grammar.

    The compact JSON text is the grammar cache key: two requests with the same schema share one compiled grammar.
    """

    kind: str
    source: str = ""

    @classmethod
    def json_schema(cls, schema: dict[str, Any] | bool) -> GrammarSpec:
        # NOTE: no sort_keys: property order is the order llguidance emits properties in, as the client wrote them.
        return cls("json_schema", json.dumps(schema, separators=(",", ":")))

    @classmethod
    def json_object(cls) -> GrammarSpec:
        return cls("json_object")

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.source}"
