"""InternLM2-Chat's tool calls read back from a reply (``TemplateSpec.tool_calls``): the reply's
text, then each call as ``<|action_start|><|plugin|>\\n{"name": ..., "parameters": {...}}``
``<|action_end|>``, as the internlm2 template writes it."""

from __future__ import annotations

import re

from sdk.templates.tool_calls import Calls, json_call

PLUGIN_CALL = re.compile(r"<\|action_start\|><\|plugin\|>(.*?)<\|action_end\|>", re.DOTALL)


def internlm2(text: str) -> tuple[str, Calls]:
    try:
        calls = [json_call(body, "parameters") for body in PLUGIN_CALL.findall(text)]
    except ValueError:
        return text, []
    return (text.split("<|action_start|>")[0], calls) if calls else (text, [])
