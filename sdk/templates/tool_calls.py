"""Tool-call formats that several model families share, as ``TemplateSpec.tool_calls``
functions: each reads a reply's text (special tokens kept) back into its content and OpenAI
function calls ``{"name", "arguments"}``, the inverse of how the template writes a call. A
reply whose calls do not parse is text (a model may write the format wrong): no calls."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

Calls = list[dict[str, str]]
HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)


def function_call(name: Any, arguments: Any) -> dict[str, str]:
    """OpenAI's function call: its arguments as JSON text, as the API sends them. A name that
    is not text, or arguments that are not an object, are a ValueError."""
    if not isinstance(name, str) or not name or not isinstance(arguments, Mapping):
        raise ValueError("not a function call")
    return {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}


def json_call(text: str, arguments_key: str = "arguments") -> dict[str, str]:
    """A call written as JSON ``{"name": ..., "<arguments_key>": {...}}``."""
    call = json.loads(text)
    if not isinstance(call, dict):
        raise ValueError("not a function call")
    return function_call(call.get("name"), call.get(arguments_key))


def hermes(text: str) -> tuple[str, Calls]:
    """Qwen2.5's and Qwen3's (Hermes') format: the reply's text, then each call as
    ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``."""
    try:
        calls = [json_call(body) for body in HERMES_CALL.findall(text)]
    except ValueError:
        return text, []
    return (text.split("<tool_call>")[0], calls) if calls else (text, [])


def llama3_json(text: str) -> tuple[str, Calls]:
    """Llama 3.1's and 3.2's JSON format: a reply that is one call, ``{"name": ...,
    "parameters": {...}}`` (after ``<|python_tag|>`` when the model writes one)."""
    body = text.strip().removeprefix("<|python_tag|>")
    if not body.startswith("{"):
        return text, []
    try:
        return "", [json_call(body, "parameters")]
    except ValueError:
        return text, []


def mistral(text: str) -> tuple[str, Calls]:
    """Mistral v0.3's and Nemo's format: ``[TOOL_CALLS]`` then a JSON list of
    ``{"name", "arguments", "id"}`` (the ids are the server's to give)."""
    content, marker, body = text.partition("[TOOL_CALLS]")
    if not marker:
        return text, []
    try:
        calls = json.loads(body)
        return content, [function_call(call.get("name"), call.get("arguments"))
                         for call in calls]
    except (ValueError, TypeError, AttributeError):
        return text, []
