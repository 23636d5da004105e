"""schemathesis over the server's OpenAPI schema: generated valid and invalid requests for every operation, a bounded
number of examples each. No 5xx; every 4xx in OpenAI's error shape; the server serves normally afterwards.

The routes read their bodies themselves (to enforce the size limit while streaming), so FastAPI's /openapi.json has
no request-body schema for the two POST operations; the test adds the protocol models' JSON schemas before fuzzing,
so the generator knows the fields it should break."""

from __future__ import annotations

import json

import httpx
import hypothesis
import pytest
import requests
from hypothesis import HealthCheck, Phase

from server.protocol import ChatCompletionRequest, CompletionRequest
from tests.reliability.clients import is_openai_error

schemathesis = pytest.importorskip("schemathesis")
from schemathesis import GenerationMode  # noqa: E402

BODIES = {"/v1/chat/completions": ChatCompletionRequest, "/v1/completions": CompletionRequest}


def _schema_with_bodies(base_url: str, pin: bool) -> dict:
    """The served schema plus request bodies. `pin`: valid cases name the served model and ask for few tokens, so they
    reach the engine and generate (otherwise nearly every valid case is a 404 for a random model name)."""
    raw = httpx.get(base_url + "/openapi.json", timeout=30).json()
    components = raw.setdefault("components", {}).setdefault("schemas", {})
    for path, model in BODIES.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        if pin:
            props = body["properties"]
            props["model"] = {"type": "string", "enum": ["tiny"]}
            for name in ("max_tokens", "max_completion_tokens"):
                if name in props:
                    props[name] = {"type": "integer", "minimum": 1, "maximum": 32}
            props["n"] = {"type": "integer", "minimum": 1, "maximum": 4}
            # Free-form JSON (`Any`) fields that a random value makes a 400 almost always: valid cases leave them out
            # (tests/server/test_structured_* and test_hostile_input cover them); invalid cases still send them.
            for name in ("tools", "tool_choice", "parallel_tool_calls", "response_format", "functions",
                         "function_call"):
                props.pop(name, None)
            # Bounded sampling knobs and plain-text prompts/roles, so a valid case is valid for the engine too (a
            # random token id is out of the tiny vocabulary, a random role is refused, min_tokens > max_tokens ...).
            bounded = {"temperature": {"type": "number", "minimum": 0, "maximum": 2},
                       "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                       "min_p": {"type": "number", "minimum": 0, "maximum": 1},
                       "top_k": {"type": "integer", "minimum": -1, "maximum": 50},
                       "min_tokens": {"type": "integer", "minimum": 0, "maximum": 1},
                       "prompt": {"type": "string", "minLength": 1, "maxLength": 64}}
            bounded["messages"] = {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                "type": "object", "required": ["role", "content"], "additionalProperties": False, "properties": {
                    "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                    "content": {"type": "string", "minLength": 1, "maxLength": 64}}}}
            for name, sub in bounded.items():
                if name in props:
                    props[name] = sub
            for name in ("stop_token_ids", "logit_bias", "suffix", "stop"):
                props.pop(name, None)
        components[model.__name__] = body
        op = raw["paths"][path]["post"]
        op.setdefault("requestBody", {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}})
    return raw


def _fuzz(op, mode, examples: int, base_url: str, session: requests.Session, tried: dict[str, int],
          server_errors: list[str], bad_shape: list[str], generated: list[int]) -> None:
    label = f"{op.label} {mode.value}"

    @hypothesis.settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                         phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @hypothesis.given(case=op.as_strategy(generation_mode=mode))
    def check(case) -> None:
        tried[label] = tried.get(label, 0) + 1
        try:
            r = case.call(base_url=base_url, session=session, timeout=60)
        except requests.exceptions.InvalidHeader:  # generated header values requests itself refuses
            return
        desc = f"{case.method} {case.path} {r.status_code}: {r.text[:300]} <- {str(case.body)[:300]}"
        if r.status_code >= 500:
            server_errors.append(desc)
        elif r.status_code >= 400:
            try:
                ok = is_openai_error(json.loads(r.text))
            except ValueError:
                ok = False
            if not ok:
                bad_shape.append(desc)
        elif r.status_code == 200 and case.path in BODIES:
            generated[0] += 1

    try:
        check()
    except hypothesis.errors.Unsatisfiable:  # nothing to break: a GET without parameters has no negative cases
        pass


def test_schemathesis_finds_no_5xx(server, scale, record_property):
    schemas = {mode: schemathesis.openapi.from_dict(_schema_with_bodies(server.base_url, mode is GenerationMode.POSITIVE))
               for mode in GenerationMode}
    session = requests.Session()
    tried: dict[str, int] = {}
    server_errors: list[str] = []
    bad_shape: list[str] = []
    generated = [0]  # valid cases that were served (200)
    for mode, schema in schemas.items():
        for result in schema.get_all_operations():
            op = result.ok()
            _fuzz(op, mode, scale.fuzz_examples, server.base_url, session, tried, server_errors, bad_shape,
                  generated)
    total = sum(tried.values())
    summary = (f"schemathesis: {total} generated requests over {len(tried)} operation/mode pairs, "
               f"{generated[0]} served with 200, {len(server_errors)} 5xx, {len(bad_shape)} 4xx not in OpenAI's shape")
    print(summary, tried)
    record_property("fuzz", summary)
    assert not server_errors, server_errors[:5]
    assert not bad_shape, bad_shape[:5]
    assert generated[0] > 0  # the valid cases really reached the engine
    assert sum(v for k, v in tried.items() if k.startswith("POST")) >= 4 * scale.fuzz_examples * 0.8
    r = httpx.post(server.v1 + "/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200
    server.wait_idle(timeout=30)
