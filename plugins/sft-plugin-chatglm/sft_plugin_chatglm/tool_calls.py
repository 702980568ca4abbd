"""ChatGLM3's and GLM-4's tool calls read back from a reply (``TemplateSpec.tool_calls``): the
templates write each call as its own assistant message, ``<|assistant|>name\\n`` then the
arguments (ChatGLM3: `tool_call(key=value, ...)` Python in a code block, as the model's
process_response reads it; GLM-4: JSON), and a text reply as ``<|assistant|>\\n text``. The
reply starts after the prompt's own ``<|assistant|>``."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable
from typing import Any

from sdk.templates.tool_calls import Calls, function_call

CHATGLM3_CALL = re.compile(r"tool_call\((.*)\)", re.DOTALL)


def python_arguments(body: str) -> dict[str, Any]:
    """The keyword arguments of ``tool_call(key=value, ...)``, each value a Python constant
    (read as data, never run)."""
    found = CHATGLM3_CALL.search(body)
    if found is None:
        raise ValueError("no tool_call(...)")
    call = ast.parse(f"tool_call({found.group(1)})", mode="eval").body
    if not isinstance(call, ast.Call) or call.args:
        raise ValueError("tool_call takes keyword arguments only")
    return {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}


def json_arguments(body: str) -> Any:
    return json.loads(body)


def calls_by_message(text: str, arguments: Callable[[str], Any]) -> tuple[str, Calls]:
    """The text replies and calls among the assistant messages of ``text``."""
    content, calls = [], []
    for message in text.split("<|assistant|>"):
        name, _, body = message.partition("\n")
        if not name.strip():
            content.append(body.strip())
            continue
        try:
            calls.append(function_call(name.strip(), arguments(body.strip())))
        except (ValueError, SyntaxError):
            return text, []
    return ("\n".join(part for part in content if part), calls) if calls else (text, [])


def chatglm3(text: str) -> tuple[str, Calls]:
    return calls_by_message(text, python_arguments)


def glm4(text: str) -> tuple[str, Calls]:
    return calls_by_message(text, json_arguments)
