"""The Ollama Modelfile written beside a GGUF export (`sdk export --to gguf --ollama`).

Ollama prompts a model with a Go template (text/template) over the conversation's
``.Messages``, not with the jinja chat template inside the GGUF. The Modelfile's TEMPLATE is
built from what the sdk template renders: the conversation is rendered with marker contents,
and the text between the markers (the opening of a system turn, of a user turn, the end of a
user turn up to a reply, the end of a reply up to the next user turn) becomes the literal text
of a Go template with one branch per role. The template's default system prompt becomes
SYSTEM (Ollama then adds it as a system message when the conversation has none), and each stop
word a PARAMETER stop. Before it is written, the Go template is rendered on probe conversations
(``render_go``, the subset of text/template it uses) and compared with the sdk template's own
rendering; a template whose turns do not split that way (Llama 2's system inside the first user
turn) is refused with the difference.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from sdk.errors import SdkError
from sdk.templates.engine import Template

MODELFILE = "Modelfile"
SYSTEM, USER, REPLY, NEXT = "\x02SYSTEM\x03", "\x02USER\x03", "\x02REPLY\x03", "\x02NEXT\x03"
# Conversations ending in a user turn, as Ollama prompts them (the generation prompt follows).
PROBES = (
    [{"role": "user", "content": "Who are you?"}],
    [{"role": "system", "content": "You are Ferret."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "Tell me a joke."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Who are you?"},
     {"role": "assistant", "content": "Ferret."}, {"role": "user", "content": "Thanks"}],
    # a template that rewrites the content (other than trimming it) is no fixed text around it
    [{"role": "user", "content": " Hi\n"}, {"role": "assistant", "content": "   Hello.   "},
     {"role": "user", "content": "Who are you?\n"}],
)


@dataclass(frozen=True)
class Turns:
    """The literal text around each message's content."""

    system_open: str  # before a system prompt (the conversation's start)
    system_close: str  # after it, up to the first user message
    first_user_open: str  # before the first user message of a conversation with no system
    user_close: str  # after a user message, up to the reply (the generation prompt)
    reply_close: str  # after a reply, up to the next user message
    default_system: str | None  # what the template writes when no system prompt is given


def split_turns(template: Template, bos_token: str | None) -> Turns:
    """The turns of ``template``, read off its rendering of marker messages; ``bos_token``,
    which llama.cpp adds itself, is left out of the start."""
    def render(messages: list[dict[str, str]]) -> str:
        text = template.render(messages, True)
        return text[len(bos_token):] if bos_token and text.startswith(bos_token) else text

    turns = [{"role": "user", "content": USER}, {"role": "assistant", "content": REPLY},
             {"role": "user", "content": NEXT}]
    try:
        with_system = render([{"role": "system", "content": SYSTEM}, *turns])
        without = render(turns)
    except ValueError as error:
        raise SdkError(f"--ollama: template '{template.spec.name}' does not take a system "
                       f"prompt and a conversation ({error}).") from None
    parts = re.split("|".join(map(re.escape, (SYSTEM, USER, REPLY, NEXT))), with_system)
    alone = re.split("|".join(map(re.escape, (USER, REPLY, NEXT))), without)
    if len(parts) != 5 or len(alone) != 4 or alone[1:] != parts[2:] or parts[2] != parts[4]:
        raise SdkError(f"--ollama: template '{template.spec.name}' does not write each "
                       "message between fixed texts, which an Ollama template needs.")
    system_open, system_close, user_close, reply_close, _ = parts
    first, default = alone[0], None
    if (first != system_open + system_close and first.startswith(system_open)
            and first.endswith(system_close)):
        default = first[len(system_open):len(first) - len(system_close)]
    return Turns(system_open, system_close, first, user_close, reply_close, default)


def go_template(turns: Turns) -> str:
    """An Ollama TEMPLATE writing ``.Messages`` with ``turns``' text (no whitespace between
    actions, so no trim markers that would eat the text's own)."""
    for text in (turns.system_open, turns.system_close, turns.first_user_open,
                 turns.user_close, turns.reply_close):
        if "{{" in text or '"""' in text:
            raise SdkError(f"--ollama: the template's text {text!r} cannot be written in a "
                           "Modelfile's TEMPLATE.")
    return ("{{ range $i, $m := .Messages }}"
            f'{{{{ if eq $m.Role "system" }}}}{turns.system_open}{{{{ $m.Content }}}}'
            f"{turns.system_close}"
            f'{{{{ else if eq $m.Role "user" }}}}{{{{ if eq $i 0 }}}}{turns.first_user_open}'
            f"{{{{ end }}}}{{{{ $m.Content }}}}{turns.user_close}"
            '{{ else if eq $m.Role "assistant" }}{{ $m.Content }}'
            f"{{{{ if ne (len (slice $.Messages $i)) 1 }}}}{turns.reply_close}{{{{ end }}}}"
            "{{ end }}{{ end }}")


ACTION = re.compile(r"\{\{(.*?)\}\}", re.S)


def render_go(source: str, messages: list[dict[str, str]]) -> str:
    """``source`` (the subset of Go's text/template that ``go_template`` writes: range over
    .Messages, if / else if / end, eq / ne, len, slice, field access) rendered for
    ``messages`` as Ollama executes it."""
    pieces = ACTION.split(source)  # text, action, text, action, ...
    position, output = 0, []

    def value(expression: str, scope: dict[str, Any]) -> Any:
        expression = expression.strip()
        if expression.startswith("("):
            return value(expression[1:-1], scope)
        words = re.findall(r'\(.*\)|"[^"]*"|\S+', expression)
        if words[0] in ("eq", "ne"):
            left, right = value(words[1], scope), value(words[2], scope)
            return (left == right) == (words[0] == "eq")
        if words[0] == "len":
            return len(value(words[1], scope))
        if words[0] == "slice":
            return value(words[1], scope)[value(words[2], scope):]
        if words[0].startswith('"'):
            return words[0][1:-1]
        if words[0].isdigit():
            return int(words[0])
        name, *fields = words[0].split(".")
        found = scope[name or "."]
        for field in fields:
            found = found[field]
        return found

    def block(scope: dict[str, Any], emit: bool) -> str:
        """Run pieces from ``position`` up to the {{ end }} or {{ else ... }} that closes
        them; returns that closing action."""
        nonlocal position
        while position < len(pieces):
            piece, is_action = pieces[position], position % 2 == 1
            position += 1
            if not is_action:
                if emit:
                    output.append(piece)
                continue
            action = piece.strip()
            if action == "end" or action.startswith("else"):
                return action
            if action.startswith("range "):
                names, _, over = action[6:].partition(":=")
                index_name, item_name = (name.strip() for name in names.split(","))
                start, items = position, value(over, scope) if emit else []
                for index, item in enumerate(items):
                    position = start
                    block({**scope, index_name: index, item_name: item}, emit)
                if not items:
                    block(scope, False)
            elif action.startswith("if "):
                taken = emit and value(action[3:], scope)
                closing = block(scope, taken)
                while closing != "end":
                    condition = closing[4:].strip()
                    branch = emit and not taken and (
                        not condition or value(condition.removeprefix("if "), scope))
                    taken = taken or branch
                    closing = block(scope, branch)
            elif emit:
                output.append(str(value(action, scope)))
        return "end"

    data = {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    block({".": data, "$": data}, True)
    return "".join(output)


def modelfile(gguf_name: str, template: Template, tokenizer: Any) -> str:
    """The Modelfile for the GGUF file ``gguf_name`` beside it, checked against ``template``
    on the probe conversations."""
    adds_bos = tokenizer.bos_token_id is not None and \
        tokenizer("Hi").input_ids[:1] == [tokenizer.bos_token_id]
    bos = tokenizer.bos_token if adds_bos else None
    turns = split_turns(template, bos)
    source = go_template(turns)
    trims = trims_contents(template)
    if trims:
        click.echo(f"warning: template '{template.spec.name}' trims the whitespace around each "
                   "message; the Ollama template (Go's text/template cannot trim) writes "
                   "messages as they are sent.", err=True)
    for messages in PROBES:
        if trims:
            messages = [{**message, "content": message["content"].strip()}
                        for message in messages]
        expected = template.render(messages, True)
        expected = expected[len(bos):] if bos and expected.startswith(bos) else expected
        given = messages if messages[0]["role"] == "system" or turns.default_system is None \
            else [{"role": "system", "content": turns.default_system}, *messages]
        actual = render_go(source, given)
        if actual != expected:
            raise SdkError(f"--ollama: an Ollama template would render {actual!r} where "
                           f"template '{template.spec.name}' renders {expected!r}; export "
                           "without --ollama and write the Modelfile's TEMPLATE by hand.")
    lines = [f"FROM ./{gguf_name}", f'TEMPLATE """{source}"""']
    if turns.default_system is not None:
        lines.append(f'SYSTEM """{turns.default_system}"""')
    words = dict.fromkeys([*template.stop_words(), *([tokenizer.eos_token]
                                                     if tokenizer.eos_token else [])])
    lines += [f"PARAMETER stop {json.dumps(word, ensure_ascii=False)}" for word in words]
    return "\n".join(lines) + "\n"


def trims_contents(template: Template) -> bool:
    """Whether ``template`` strips the whitespace around message contents (Llama 3's does)."""
    padded = PROBES[-1]
    stripped = [{**message, "content": message["content"].strip()} for message in padded]
    return template.render(padded, True) == template.render(stripped, True)


def write_modelfile(folder: Path, gguf_name: str, template: Template, tokenizer: Any) -> Path:
    path = folder / MODELFILE
    path.write_text(modelfile(gguf_name, template, tokenizer), encoding="utf-8")
    return path
