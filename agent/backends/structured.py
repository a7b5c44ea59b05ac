"""Structured outputs and tool calls, for servers that support them natively and for those that do not.

Three things live here, all pure functions on JSON-like values (no I/O, no SDK client):

- ``strict_json_schema``: pydantic model or JSON schema -> a schema OpenAI's *strict* mode accepts
  (structured outputs, ``"strict": true`` tools). Strict mode compiles the schema into a grammar
  before decoding, so it accepts only a subset of JSON Schema: every object must say
  ``additionalProperties: false`` and list *every* property in ``required`` (an optional field is
  written as nullable, ``anyOf [..., {"type": "null"}]``), the root must be an object, unions are
  ``anyOf`` only, and keywords outside the documented subset (``prefixItems``, ``minLength``,
  ``uniqueItems``, ``patternProperties``, ...) are refused with HTTP 400. Supported bounds
  (``minimum``/``maximum``/``exclusive*``, ``minItems``/``maxItems``, ``enum``, ``pattern``) are kept,
  so numbers stay bounded; what has to go is kept for the model as words in ``description``
  ("default: 20"), and the toolbox's own pydantic validation still enforces it on arrival.
- the JSON *action* protocol (``tool_mode=json``) for servers without native tool calling: the
  tools become a catalogue in the system prompt, the reply is constrained by ``action_schema`` (a
  ``response_format`` json_schema over the union of the tools' calls) and parsed back into calls
  by ``parse_action_reply``; ``json_mode_messages`` rewrites a history that holds native
  ``tool_calls``/``tool`` messages into plain user/assistant turns such a server accepts.
- ``parse_tool_call_blocks``: Hermes/Qwen-style ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``
  blocks in plain content, which vLLM/llama.cpp/Ollama hand back verbatim when their tool parser
  is off or fails.

A call whose JSON is broken is never dropped: it comes back with ``arguments_json`` set to the raw
text, so ``completion.call_arguments`` raises and the agent can show the model what was wrong.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from typing import Any

from pydantic import BaseModel

# Keywords strict mode does not accept (OpenAI "Supported schemas"); they are removed, and the
# ones that carry meaning for the model are restated in ``description``.
STRICT_UNSUPPORTED_KEYWORDS: frozenset[str] = frozenset(
    {
        "minLength",
        "maxLength",
        "uniqueItems",
        "patternProperties",
        "unevaluatedProperties",
        "unevaluatedItems",
        "propertyNames",
        "minProperties",
        "maxProperties",
        "contains",
        "minContains",
        "maxContains",
        "examples",
        "title",
    }
)
_DESCRIBED_KEYWORDS = {"minLength": "length >= {}", "maxLength": "length <= {}"}
MAX_INLINE_DEPTH = 32  # $ref chains deeper than this are recursive: refuse rather than loop

CallDict = dict[str, str]  # {"id", "name", "arguments_json"}: the form ``Completion`` stores


def _sdk_strict_core() -> Any:
    """The SDK's own strict transform (what ``client.chat.completions.parse`` sends), if this SDK has it."""
    try:
        from openai.lib._pydantic import _ensure_strict_json_schema
    except ImportError:  # a future SDK may move it; ``_tighten`` alone does the same job
        return None
    return _ensure_strict_json_schema


def strict_json_schema(model: type[BaseModel] | dict[str, Any]) -> dict[str, Any]:
    """A copy of ``model``'s JSON schema that OpenAI's strict mode accepts (see the module docstring).

    The SDK's ``_ensure_strict_json_schema`` does the core (``additionalProperties``, ``required``,
    ``$ref`` unravelling, ``None`` defaults); ``_tighten`` then removes what the SDK leaves but the
    API refuses (``prefixItems`` from tuples, ``minLength``, non-null ``default``, ``oneOf``). The
    input is never modified.
    """
    schema = model.model_json_schema() if isinstance(model, type) else copy.deepcopy(model)
    if (core := _sdk_strict_core()) is not None:
        schema = core(schema, path=(), root=schema)
    return _tighten(schema)


def _describe(schema: dict[str, Any], note: str) -> None:
    text = str(schema.get("description") or "").rstrip()
    schema["description"] = f"{text} ({note})" if text else note


def _tighten(schema: dict[str, Any]) -> dict[str, Any]:
    """Make one schema node (and everything under it) strict, in place; returns it."""
    if "oneOf" in schema:  # strict mode knows anyOf only; for disjoint variants they mean the same
        schema["anyOf"] = [*schema.get("anyOf", []), *schema.pop("oneOf")]
    if "prefixItems" in schema:  # a tuple: keep its length bounds, type the items by their union
        variants = schema.pop("prefixItems")
        unique = [v for i, v in enumerate(variants) if v not in variants[:i]]
        schema["items"] = unique[0] if len(unique) == 1 else {"anyOf": unique}
    notes = []
    if "default" in schema and (default := schema.pop("default")) is not None:
        notes.append(f"default: {json.dumps(default)}")
    notes += [phrase.format(schema[keyword]) for keyword, phrase in _DESCRIBED_KEYWORDS.items() if keyword in schema]
    if notes:
        _describe(schema, "; ".join(notes))
    for keyword in STRICT_UNSUPPORTED_KEYWORDS & schema.keys():
        del schema[keyword]
    if schema.get("type") == "object" or "properties" in schema:
        properties = schema.setdefault("properties", {})
        schema["type"] = "object"
        schema["additionalProperties"] = False
        schema["required"] = list(properties)
        for name in properties:
            properties[name] = _tighten(properties[name])
    if isinstance(schema.get("items"), dict):
        schema["items"] = _tighten(schema["items"])
    for keyword in ("anyOf", "allOf"):
        if isinstance(schema.get(keyword), list):
            schema[keyword] = [_tighten(v) for v in schema[keyword]]
    for keyword in ("$defs", "definitions"):
        if isinstance(schema.get(keyword), dict):
            schema[keyword] = {k: _tighten(v) for k, v in schema[keyword].items()}
    return schema


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every local ``$ref`` replaced by its target and ``$defs`` dropped.

    Needed when a schema is nested inside another (a tool's parameters inside the action union):
    ``#/$defs/X`` would otherwise resolve against the outer root. Recursive schemas are refused.
    """
    root = schema

    def resolve(ref: str) -> Any:
        node: Any = root
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]
        return node

    def walk(node: Any, depth: int) -> Any:
        if depth > MAX_INLINE_DEPTH:
            raise ValueError("schema is recursive (or $ref chains are deeper than 32); cannot inline it")
        if isinstance(node, list):
            return [walk(v, depth) for v in node]
        if not isinstance(node, dict):
            return node
        if isinstance(ref := node.get("$ref"), str) and ref.startswith("#/"):
            target = walk(copy.deepcopy(resolve(ref)), depth + 1)
            siblings = {k: walk(v, depth) for k, v in node.items() if k != "$ref"}
            return {**target, **siblings}
        return {k: walk(v, depth) for k, v in node.items() if k not in ("$defs", "definitions")}

    return walk(schema, 0)


# --- tool definitions -----------------------------------------------------------------------------


def tool_function(tool: dict[str, Any]) -> dict[str, Any]:
    """The ``function`` part of an OpenAI tool definition (``{"type": "function", "function": {...}}``)."""
    function = tool.get("function", tool)
    if not isinstance(function, dict) or not function.get("name"):
        raise ValueError(f"not an OpenAI function tool definition: {str(tool)[:200]}")
    return function


def strict_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tools with strict parameter schemas and ``"strict": true`` (native mode against the OpenAI API)."""
    out = []
    for tool in tools:
        function = dict(tool_function(tool))
        function["parameters"] = strict_json_schema(function.get("parameters") or {"type": "object", "properties": {}})
        function["strict"] = True
        out.append({"type": "function", "function": function})
    return out


# The longest thought an action may carry: one sentence. A server that compiles the schema into a
# grammar (llama.cpp) stops the string there, so an action always fits its reply limit.
ACTION_THOUGHT_CHARS = 200


def action_schema(tools: list[dict[str, Any]], thought_chars: int | None = None) -> dict[str, Any]:
    """The strict schema of one action: ``{"thought": str, "action": {"name": <tool>, "arguments": {...}}}``.

    ``action`` is an ``anyOf`` with one object per tool whose ``name`` is a one-value enum, so the
    arguments are constrained by *that* tool's schema (a bare ``{"name": enum, "arguments": anyOf}``
    would let a grammar pair one tool's name with another's arguments). The root is an object
    because strict mode refuses a root ``anyOf``; ``thought`` comes first so the model says why
    before it commits to an action; ``thought_chars`` bounds it (not in the API's strict subset).
    """
    variants = []
    for tool in tools:
        function = tool_function(tool)
        parameters = inline_refs(strict_json_schema(function.get("parameters") or {"type": "object", "properties": {}}))
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": [function["name"]]}, "arguments": parameters},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return {
        "type": "object",
        "properties": {
            "thought": {"type": "string", "description": "one short sentence: why this action",
                        **({"maxLength": thought_chars} if thought_chars else {})},
            "action": {"anyOf": variants},
        },
        "required": ["thought", "action"],
        "additionalProperties": False,
    }


def tool_catalogue(tools: list[dict[str, Any]]) -> str:
    """The system-prompt text that replaces native ``tools=`` in json tool mode.

    For the agent's seven tools it is 3,187 characters (about 800 tokens), less than the 4,494
    characters of JSON that native ``tools=`` sends, so switching modes does not raise the prompt
    budget.
    """
    lines = [
        "You act by calling tools. This server has no native tool calling: reply with exactly one JSON "
        "object and nothing else, of the form",
        '{"thought": "<one short sentence: why>", "action": {"name": "<tool name>", "arguments": {<arguments>}}}',
        "Each reply calls exactly one tool; its result comes back in the next user message. The tools "
        "and the JSON schemas of their arguments:",
    ]
    for tool in tools:
        function = tool_function(tool)
        parameters = inline_refs(strict_json_schema(function.get("parameters") or {"type": "object", "properties": {}}))
        lines.append(f"- {function['name']}: {function.get('description', '').strip()}")
        lines.append(f"  arguments: {json.dumps(parameters.get('properties', {}), separators=(',', ':'))}")
    return "\n".join(lines)


def json_mode_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``messages`` as a server without tool calling accepts them, with the tool catalogue in the system prompt.

    Assistant ``tool_calls`` become the JSON action text the model would have written; ``tool``
    results become user messages naming the call; consecutive user texts are merged (some chat
    templates insist that roles alternate). The input is not modified.
    """
    names: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            actions = []
            for call in message["tool_calls"]:
                function = call.get("function", {})
                names[call.get("id", "")] = function.get("name", "")
                raw = function.get("arguments") or "{}"
                try:
                    arguments: Any = json.loads(raw)
                except json.JSONDecodeError:
                    arguments = raw  # echo the broken text: the next message says what was wrong with it
                action = {"name": function.get("name", ""), "arguments": arguments}
                actions.append(json.dumps({"thought": message.get("content") or "", "action": action}))
            out.append({"role": "assistant", "content": "\n".join(actions)})
        elif role == "tool":
            name = names.get(message.get("tool_call_id", ""), "the tool")
            text = f"Result of {name}:\n{message.get('content', '')}"
            if out and out[-1]["role"] == "user" and isinstance(out[-1].get("content"), str):
                out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{text}"}
            else:
                out.append({"role": "user", "content": text})
        else:
            out.append({k: v for k, v in message.items() if k != "tool_calls"})
    catalogue = tool_catalogue(tools)
    for i, message in enumerate(out):
        if message.get("role") == "system" and isinstance(message.get("content"), str):
            out[i] = {**message, "content": f"{message['content']}\n\n{catalogue}"}
            break
    else:
        out.insert(0, {"role": "system", "content": catalogue})
    return out


# --- reading calls back -------------------------------------------------------------------------

_TOOL_CALL_BLOCK = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
_NAME_IN_BROKEN_JSON = re.compile(r'"(?:name|tool)"\s*:\s*"([^"\\]{1,100})"')
_FENCE = re.compile(r"^\s*```(?:json|JSON)?\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def new_call_id() -> str:
    """An id for a call the server did not number (json mode, ``<tool_call>`` blocks)."""
    return f"call_{uuid.uuid4().hex[:16]}"


def _call_from_object(data: dict[str, Any]) -> CallDict | None:
    """``{"name": ..., "arguments": {...}}`` (or ``parameters``, or arguments as a JSON string) -> a call."""
    name = data.get("name") or data.get("tool")
    if not isinstance(name, str) or not name:
        return None
    arguments = data.get("arguments", data.get("parameters", {}))
    arguments_json = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": new_call_id(), "name": name, "arguments_json": arguments_json}


def _broken_call(text: str) -> CallDict:
    """A call whose JSON does not parse: the name if it can be read, the raw text as its arguments."""
    m = _NAME_IN_BROKEN_JSON.search(text)
    return {"id": new_call_id(), "name": m.group(1) if m else "", "arguments_json": text}


def _loads_object(text: str) -> Any:
    """JSON from a reply, tolerating fences and prose around one object; raises ``JSONDecodeError``."""
    body = text.strip()
    if m := _FENCE.match(body):
        body = m.group(1).strip()
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        start, end = body.find("{"), body.rfind("}")
        if start < 0 or end <= start:
            raise
        return json.loads(body[start : end + 1])


def parse_tool_call_blocks(content: str | None) -> tuple[str | None, list[CallDict]]:
    """``(content without the blocks or None, calls)`` for Hermes/Qwen ``<tool_call>`` blocks.

    An unclosed last block (the server stopped at its stop token before ``</tool_call>``) counts.
    """
    if not content or "<tool_call>" not in content:
        return content, []
    calls: list[CallDict] = []
    for block in _TOOL_CALL_BLOCK.findall(content):
        try:
            data = _loads_object(block)
        except json.JSONDecodeError:
            calls.append(_broken_call(block))
            continue
        items = data if isinstance(data, list) else [data]
        for item in items:
            call = _call_from_object(item) if isinstance(item, dict) else None
            calls.append(call or _broken_call(block))
    rest = _TOOL_CALL_BLOCK.sub("", content).strip()
    return rest or None, calls


def parse_action_reply(text: str | None) -> tuple[str | None, list[CallDict]]:
    """``(thought or other text, calls)`` from a json-tool-mode reply.

    Accepts the schema's ``{"thought", "action"}``, a bare ``{"name", "arguments"}`` (what a model
    writes when the server ignored ``response_format``), a list of actions, and ``<tool_call>``
    blocks. Broken JSON that was evidently meant as a call comes back as a call with the raw text;
    prose with no call in it stays content (the agent nudges the model to call a tool).
    """
    if not text or not text.strip():
        return None, []
    if "<tool_call>" in text:
        return parse_tool_call_blocks(text)
    try:
        data = _loads_object(text)
    except json.JSONDecodeError:
        if "{" in text and _NAME_IN_BROKEN_JSON.search(text):
            return None, [_broken_call(text.strip())]
        return text, []
    if not isinstance(data, dict):
        return text, []
    thought = data.get("thought") if isinstance(data.get("thought"), str) else None
    actions = data.get("action", data.get("actions", data))
    calls: list[CallDict] = []
    for action in actions if isinstance(actions, list) else [actions]:
        call = _call_from_object(action) if isinstance(action, dict) else None
        if call is None:
            return text, []
        calls.append(call)
    return (thought.strip() or None) if thought else None, calls
