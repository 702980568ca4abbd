"""A Hugging Face chat template (jinja) that renders exactly what a Template renders, for
exported models: `tokenizer.apply_chat_template` then prompts them as `sdk` does.

Parts templates become a generated jinja with their parts as string literals, filled with the
Template's special tokens. Jinja templates keep their source; what the engine adds around it
is added in jinja: the default system prompt, and the special tokens a tokenizer may lack
(the engine falls back on the spec's, transformers passes only the tokenizer's).

Every line of the generated text starts with ``{%-`` or ``{{-``, so the newlines between them
never reach the output, whatever the environment's whitespace options.
"""

from __future__ import annotations

import json
import re

from sdk.templates.engine import Template


def literal(text: str) -> str:
    """``text`` as a jinja string literal (jinja reads Python's backslash escapes)."""
    return json.dumps(text, ensure_ascii=False)


def fixed(template: Template, part: str) -> str:
    """A part rendered without a message (prefixes, suffixes) as a literal; empty when it
    renders nothing."""
    text = template._fill(part)
    return literal(text) if text else ""


def with_content(template: Template, part: str) -> str:
    """A system or user part: its filled text with ``message['content']`` in place of each
    ``{content}``."""
    texts = [fixed(template, text) for text in part.split("{content}")]
    pieces = [texts[0]]
    for text in texts[1:]:
        pieces += ["message['content']", text]
    return " + ".join(p for p in pieces if p)


def output(expression: str) -> list[str]:
    return ["{{- " + expression + " }}"] if expression else []


def default_system_lines(template: Template) -> list[str]:
    system = template.spec.default_system
    if system is None:
        return []
    return ["{%- if messages[0]['role'] != 'system' %}",
            "{%- set messages = [{'role': 'system', 'content': " + literal(system) + "}] + "
            "messages %}",
            "{%- endif %}"]


def parts_jinja(template: Template) -> str:
    spec = template.spec
    reply = " + ".join(e for e in (
        fixed(template, spec.assistant_prefix), "message['content']",
        fixed(template, spec.assistant_suffix), fixed(template, spec.turn_separator)) if e)
    lines = [
        *default_system_lines(template),
        *output(fixed(template, spec.prefix)),
        "{%- for message in messages %}",
        "{%- if message['role'] == 'system' %}",
        *output(with_content(template, spec.system_format)),
        "{%- elif message['role'] == 'user' %}",
        *output(with_content(template, spec.user_format)),
        "{%- elif message['role'] == 'assistant' %}",
        *output(reply),
        "{%- else %}",
        "{{- raise_exception('Unknown role: ' + message['role']) }}",
        "{%- endif %}",
        "{%- endfor %}",
        "{%- if add_generation_prompt %}",
        *output(fixed(template, spec.assistant_prefix)),
        "{%- endif %}",
    ]
    return "\n".join(lines)


def jinja_with_defaults(template: Template) -> str:
    """The spec's jinja, after lines that set what the engine gives it and a tokenizer may
    not: the spec's special tokens (only where the template uses them), its variables (the
    run's --enable-thinking: the exported model's default, which a caller's own
    ``enable_thinking`` still overrides) and the default system prompt."""
    source = template.spec.jinja
    given = {**template.special_tokens, **template.spec.variables}
    lines = [f"{{%- if {name} is not defined %}}{{%- set {name} = {literal(value)} %}}"
             "{%- endif %}"
             for name, value in given.items() if re.search(rf"\b{re.escape(name)}\b", source)]
    lines += default_system_lines(template)
    # trim_blocks drops the newline after the last line, so the source starts a line of its
    # own, as it does in the spec (lstrip_blocks depends on that).
    return "\n".join(lines) + "\n" + source if lines else source


def to_jinja(template: Template) -> str:
    """A chat template for `tokenizer.apply_chat_template` that renders what
    ``template.render`` renders, with or without a generation prompt."""
    if template.spec.jinja is not None:
        return jinja_with_defaults(template)
    return parts_jinja(template)
