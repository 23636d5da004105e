"""Tool calling: the request's tools and tool_choice, rendering them for the model, and reading calls back.

- `ToolPlan.from_request` validates `tools` / `tool_choice` / `parallel_tool_calls` (400s name the field).
- Rendering: tools go through the model's chat template (`apply_chat_template(tools=...)`) when the template uses
  them; a template that ignores tools (SmolLM2, the bundled demo pair) gets them in a system message in the Hermes
  format instead, so the model still sees the signatures and the parser knows what to expect.
- `tool_choice`:
  - "none": tools are not rendered; plain text.
  - "required": the output is constrained to a JSON array of `{"name", "arguments"}` objects, one `anyOf` branch per
    function with `name` fixed and `arguments` held to that function's parameter schema (at most one item unless
    `parallel_tool_calls`), as vLLM does; every reply is a valid call, even from a small model.
  - a named function: the output is constrained to that function's parameter schema; it is the call's arguments.
  - "auto": free text, read by the parser of the template's family (`PARSERS`): Hermes `<tool_call>{...}</tool_call>`
    (Qwen 2.5/3, Hermes, SmolLM3, and the fallback rendering), Mistral `[TOOL_CALLS][...]`, Llama 3.x JSON
    (`{"name": ..., "parameters": ...}` as the whole reply, optionally after `<|python_tag|>`).
- Streaming: `ToolStreamer` turns text deltas into `delta.content` / `delta.tool_calls` pieces the OpenAI SDK
  reassembles: a named call streams its arguments as they are generated; "required" and parsed calls are sent when
  complete; "auto" streams text until a tool-call marker could begin.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from engine.structured.spec import GrammarSpec
from server.errors import BadRequestError

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_TOOLS = 128


@dataclass
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]

    def as_openai(self) -> dict[str, Any]:
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters}}


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


def call_dict(index: int, name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    return {"id": call_id or new_call_id(), "type": "function", "function": {"name": name, "arguments": arguments},
            **({"index": index} if index >= 0 else {})}


# ------------------------------------------------------------------------------------------------- parsers (auto)


class HermesParser:
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, any number; text before the first is content."""

    name = "hermes"
    marker = "<tool_call>"
    _BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)

    @staticmethod
    def detect(template: str) -> bool:
        return "<tool_call>" in template

    def parse(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        head, sep, _ = text.partition(self.marker)
        if not sep:
            return text, []
        calls = [c for c in (_read_call(b) for b in self._BLOCK.findall(text[len(head):])) if c is not None]
        if not calls:
            return text, []
        return (head.strip() or None), calls


class MistralParser:
    """`[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]`."""

    name = "mistral"
    marker = "[TOOL_CALLS]"

    @staticmethod
    def detect(template: str) -> bool:
        return "[TOOL_CALLS]" in template

    def parse(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        head, sep, rest = text.partition(self.marker)
        if not sep:
            return text, []
        try:
            items = json.loads(rest.strip())
        except json.JSONDecodeError:
            return text, []
        items = items if isinstance(items, list) else [items]
        calls = [c for c in (_read_call(i) for i in items) if c is not None]
        return ((head.strip() or None), calls) if calls else (text, [])


class Llama3JsonParser:
    """The whole reply is `{"name": ..., "parameters": {...}}` (several separated by `;`), after an optional
    `<|python_tag|>` (Llama 3.1/3.2 JSON tool calling)."""

    name = "llama3_json"
    marker = None

    @staticmethod
    def detect(template: str) -> bool:
        return "<|python_tag|>" in template or ("tools" in template and "<|eot_id|>" in template)

    def parse(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        body = text.strip().removeprefix("<|python_tag|>").strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        for part in body.split(";"):
            c = _read_call(part.strip())
            if c is None:
                return text, []
            calls.append(c)
        return None, calls


PARSERS = [HermesParser, MistralParser, Llama3JsonParser]  # detection order


def _read_call(raw: Any) -> tuple[str, str] | None:
    """(name, arguments JSON text) from a call object or its JSON text; None if it is not one."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            return None
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        return None
    args = raw.get("arguments", raw.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string already
        return raw["name"], args
    return raw["name"], json.dumps(args, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------------- the plan


@dataclass
class ToolPlan:
    mode: str  # none | auto | required | named
    tools: list[Tool]
    named: str | None = None
    parallel: bool = True
    parser: Any = field(default_factory=HermesParser)
    native: bool = True  # the chat template renders `tools` itself

    @classmethod
    def from_request(cls, tools: list[Any] | None, tool_choice: Any, parallel: bool | None) -> ToolPlan | None:
        """None when the request has no tools (tool_choice must then be absent or "none")."""
        if not tools:
            if tool_choice not in (None, "none"):
                raise BadRequestError("tool_choice requires tools", param="tool_choice")
            return None
        parsed = [_parse_tool(i, t) for i, t in enumerate(tools)]
        if len(parsed) > MAX_TOOLS:
            raise BadRequestError(f"at most {MAX_TOOLS} tools are allowed, got {len(parsed)}", param="tools")
        names = [t.name for t in parsed]
        if len(set(names)) != len(names):
            raise BadRequestError("tool function names must be unique", param="tools")
        mode, named = _parse_choice(tool_choice, names)
        return cls(mode, parsed, named, True if parallel is None else bool(parallel))

    def bind_template(self, template: str | None) -> None:
        """Pick the parser family from the chat template; remember whether it renders tools itself."""
        template = template or ""
        self.native = "tools" in template
        self.parser = next((p() for p in PARSERS if p.detect(template)), HermesParser()) if self.native \
            else HermesParser()

    def grammar(self) -> GrammarSpec | None:
        if self.mode == "named":
            return GrammarSpec.json_schema(self.tool(self.named).parameters)
        if self.mode == "required":
            branches = [{"type": "object", "properties": {"name": {"const": t.name}, "arguments": t.parameters},
                         "required": ["name", "arguments"], "additionalProperties": False} for t in self.tools]
            schema: dict[str, Any] = {"type": "array", "items": {"anyOf": branches}, "minItems": 1}
            if not self.parallel:
                schema["maxItems"] = 1
            return GrammarSpec.json_schema(schema)
        return None

    def tool(self, name: str | None) -> Tool:
        return next(t for t in self.tools if t.name == name)

    @property
    def renders_tools(self) -> bool:
        return self.mode != "none"

    def read(self, text: str) -> tuple[str | None, list[tuple[str, str]]]:
        """(content, [(name, arguments JSON)]) from a finished reply."""
        if self.mode == "named":
            return None, [(self.named, text)]
        if self.mode == "required":
            try:
                items = json.loads(text)
            except json.JSONDecodeError:
                return text, []  # cut by max_tokens: hand the text back, finish_reason says "length"
            calls = [c for c in (_read_call(i) for i in items) if c is not None]
            return (None, calls) if calls else (text, [])
        if self.mode == "auto":
            content, calls = self.parser.parse(text)
            known = {t.name for t in self.tools}
            calls = [c for c in calls if c[0] in known]
            if not calls:
                return text, []
            return content, calls if self.parallel else calls[:1]
        return text, []


def _parse_tool(i: int, raw: Any) -> Tool:
    if not isinstance(raw, dict) or raw.get("type", "function") != "function" or not isinstance(
            raw.get("function"), dict):
        raise BadRequestError(f"tools[{i}] must be {{'type': 'function', 'function': {{...}}}}", param="tools")
    fn = raw["function"]
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise BadRequestError(f"tools[{i}].function.name must be 1-64 characters of a-z, A-Z, 0-9, _ or -",
                              param="tools")
    params = fn.get("parameters")
    if params is None:
        params = {"type": "object", "properties": {}}
    if not isinstance(params, dict):
        raise BadRequestError(f"tools[{i}].function.parameters must be a JSON Schema object",
                              param="tools")
    return Tool(name, str(fn.get("description") or ""), params)


def _parse_choice(choice: Any, names: list[str]) -> tuple[str, str | None]:
    if choice is None:
        return "auto", None
    if choice in ("none", "auto", "required"):
        return choice, None
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if name not in names:
            raise BadRequestError(f"tool_choice names function {name!r}, which is not among the tools",
                                  param="tool_choice")
        return "named", name
    raise BadRequestError("tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': "
                          "{'name': ...}}", param="tool_choice")


# ---------------------------------------------------------------------------------------------------- rendering


def fallback_system_prompt(tools: list[Tool]) -> str:
    """The Hermes / Qwen 2.5 tool prompt, for templates that do not render tools themselves."""
    sigs = "\n".join(json.dumps(t.as_openai(), ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
            f"{sigs}\n</tools>\n\nFor each function call, return a json object with function name and arguments "
            "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')


def template_messages(messages: list[dict[str, Any]], plan: ToolPlan | None) -> list[dict[str, Any]]:
    """Messages for the chat template. A template that renders tools gets OpenAI's structure (assistant tool_calls
    with arguments as objects, tool results with their call id); any other gets the same content as Hermes text."""
    native = plan is not None and plan.native
    out = []
    for m in messages:
        m = dict(m)
        calls = m.pop("tool_calls", None)
        if calls:
            if native:
                m["tool_calls"] = [{"id": c.get("id"), "type": "function",
                                    "function": {"name": c["function"]["name"],
                                                 "arguments": _as_object(c["function"].get("arguments"))}}
                                   for c in calls]
            else:
                blocks = [json.dumps({"name": c["function"]["name"],
                                      "arguments": _as_object(c["function"].get("arguments"))}, ensure_ascii=False)
                          for c in calls]
                m["content"] = ((m.get("content") or "") + "".join(f"\n<tool_call>\n{b}\n</tool_call>"
                                                                   for b in blocks)).lstrip("\n")
        if m.get("content") is None:
            m["content"] = ""
        if not native:
            m.pop("tool_call_id", None)
            if m["role"] == "tool":
                m["content"] = f"<tool_response>\n{m['content']}\n</tool_response>"
        out.append(m)
    if plan is not None and plan.renders_tools and not native:
        prompt = fallback_system_prompt(plan.tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{prompt}"}
        else:
            out.insert(0, {"role": "system", "content": prompt})
    return out


def _as_object(arguments: Any) -> Any:
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments if arguments is not None else {}


# ---------------------------------------------------------------------------------------------------- streaming


class ToolStreamer:
    """One choice's stream: text deltas in, `delta` dicts out (`{"content": ...}` or `{"tool_calls": [...]}`)."""

    def __init__(self, plan: ToolPlan):
        self.plan = plan
        self.text = ""
        self._sent = 0  # characters of `text` already streamed as content (auto) or arguments (named)
        self._held = plan.mode == "required"  # everything held until the end
        self.num_calls = 0
        self._named_id = new_call_id()

    def feed(self, delta: str) -> list[dict[str, Any]]:
        self.text += delta
        if self.plan.mode == "named":
            out = []
            if self.num_calls == 0:
                self.num_calls = 1
                out.append({"tool_calls": [{"index": 0, "id": self._named_id, "type": "function",
                                            "function": {"name": self.plan.named, "arguments": ""}}]})
            if delta:
                out.append({"tool_calls": [{"index": 0, "function": {"arguments": delta}}]})
            return out
        if self._held or self.plan.mode != "auto":
            return self._content_upto(len(self.text)) if self.plan.mode == "none" else []
        marker = self.plan.parser.marker
        if marker is None:  # Llama 3 JSON: a reply that starts like a call is held whole
            if self.text.lstrip().startswith(("{", "<|python_tag|>")) or not self.text.strip():
                self._held = bool(self.text.strip())
                return []
            return self._content_upto(len(self.text))
        at = self.text.find(marker, self._sent)
        if at >= 0:
            self._held = True
            return self._content_upto(at)
        return self._content_upto(len(self.text) - _partial_suffix(self.text, marker))

    def finish(self) -> list[dict[str, Any]]:
        """Whatever is left once the choice ends: the parsed calls, or the held text as content."""
        mode = self.plan.mode
        if mode == "named":
            return self.feed("") if self.num_calls == 0 else []
        calls = self.plan.read(self.text)[1] if mode != "none" else []
        if not calls:
            return self._content_upto(len(self.text))
        out = []
        marker = self.plan.parser.marker if mode == "auto" else None
        if marker is not None:  # text before the first call that was held back as a possible marker start
            out += self._content_upto(len(self.text[:self.text.find(marker)].rstrip()))
        for i, (name, args) in enumerate(calls):
            # Two pieces per call, as OpenAI streams them: the header, then the arguments.
            out.append({"tool_calls": [{"index": i, "id": new_call_id(), "type": "function",
                                        "function": {"name": name, "arguments": ""}}]})
            out.append({"tool_calls": [{"index": i, "function": {"arguments": args}}]})
        self.num_calls = len(calls)
        return out

    def _content_upto(self, end: int) -> list[dict[str, Any]]:
        if end <= self._sent:
            return []
        piece = self.text[self._sent:end]
        self._sent = end
        return [{"content": piece}]


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `marker` (held back: it may grow into it)."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0
