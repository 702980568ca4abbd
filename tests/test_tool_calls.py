"""Each template's tool-call reader (TemplateSpec.tool_calls) against the template itself: the
text the template writes for a reply's calls (checked against the official formats in the
plugins' tool tests) reads back as those calls."""

from __future__ import annotations

import json

import pytest

from sdk.infer.stops import cut_at_stop
from sdk.plugins import load_plugins
from sdk.specs import resolve_callable
from sdk.templates.engine import Template

REGISTRY = load_plugins().registry
WITH_CALLS = [name for name in REGISTRY.names("templates")
              if REGISTRY.get("templates", name).tool_calls is not None]
TOOLS = json.dumps([{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                     "days": {"type": "integer"}}}}}])
CALLS = [{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
         {"name": "get_weather", "arguments": {"city": "北京", "days": 1, "hourly": True}}]


def reply_text(template: Template, calls: list[dict]) -> str:
    """What a model trained on the template writes for ``calls``: the text the call's
    message adds after the generation prompt, up to its end (as the server cuts it)."""
    prompt = [{"role": "user", "content": "Weather?", "tools": TOOLS}]
    message = {"role": "assistant", "content": "", "tool_calls": json.dumps(
        [{"id": f"call{number:05}", "type": "function", "function": call}
         for number, call in enumerate(calls)])}
    before = template.render(prompt, add_generation_prompt=True)
    through = template.render([*prompt, message])
    assert through.startswith(before)
    return cut_at_stop(through[len(before):], template.stop_words())


def test_the_tool_formats_of_the_families_have_readers():
    assert {"qwen2.5", "qwen3", "llama3.1", "mistral-v0.3", "mistral-nemo", "chatglm3", "glm4",
            "glm4-0414", "internlm2"} <= set(WITH_CALLS)


@pytest.mark.parametrize("name", WITH_CALLS)
def test_a_templates_calls_read_back(name):
    template = Template(REGISTRY.get("templates", name))
    # Llama 3.1's template takes one call a message
    calls = CALLS[:1] if name.startswith("llama") else CALLS
    read = resolve_callable(template.spec.tool_calls)
    content, found = read(reply_text(template, calls))
    assert [{"name": call["name"], "arguments": json.loads(call["arguments"])}
            for call in found] == calls
    assert all(isinstance(call["arguments"], str) for call in found)
    assert "get_weather" not in content


@pytest.mark.parametrize("name", WITH_CALLS)
def test_a_text_reply_or_a_broken_call_is_text(name):
    read = resolve_callable(REGISTRY.get("templates", name).tool_calls)
    assert read("The weather is fine.") == ("The weather is fine.", [])
    template = Template(REGISTRY.get("templates", name))
    broken = reply_text(template, CALLS[:1]).replace('"Paris"', "Paris").replace(
        "'Paris'", "Paris")
    assert read(broken) == (broken, [])
