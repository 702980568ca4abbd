"""Render a conversation with a TemplateSpec and encode it into input ids and loss labels."""

from __future__ import annotations

import bisect
import dataclasses
import difflib
import functools
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sdk.errors import SdkError
from sdk.specs import TemplateSpec

Message = Mapping[str, str]
IGNORE_INDEX = -100
# Stands in for reply number N when locating replies in a rendered jinja template: text from
# Unicode's private use area, which no template writes and strip() leaves alone.
SENTINEL = "\ue000sdk-reply-{}\ue001"
SENTINEL_PATTERN = re.compile("\ue000sdk-reply-(\\d+)\ue001")
ROLES = ("system", "user", "assistant", "tool")
# The literal text parts of a parts template, and the {name} placeholders in them.
PARTS = ("prefix", "system_format", "user_format", "assistant_prefix", "assistant_suffix",
         "turn_separator")
PLACEHOLDER = re.compile(r"\{(\w+)\}")
LOSS_SCOPES = ("all", "last")
# How a jinja template may show a reply's text: as written, stripped, or (reasoning templates
# such as DeepSeek-R1's and Qwen3's, for earlier turns) only what follows an inline </think>.
REPLY_VIEWS = (lambda text: text, str.strip, lambda text: text.split("</think>")[-1],
               lambda text: text.split("</think>")[-1].lstrip("\n"),
               lambda text: text.split("</think>")[-1].strip())
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def check_messages(messages: Sequence[Message]) -> None:
    """Raise ValueError naming the first message a template cannot render."""
    if not messages:
        raise ValueError("the conversation has no messages")
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"message {index} is not an object with 'role' and 'content'")
        role, content = message.get("role"), message.get("content")
        reasoning = message.get("reasoning_content")
        if reasoning is not None and (role != "assistant" or not isinstance(reasoning, str)):
            raise ValueError(f"message {index} ({role}) has a reasoning_content that is not "
                             "an assistant's text")
        if role not in ROLES:
            raise ValueError(f"message {index} has role {role!r}; expected one of {ROLES}")
        if not isinstance(content, str):
            raise ValueError(f"message {index} ({role}) has no text 'content'")
        if role == "system" and index != 0:
            raise ValueError(f"message {index} is a system message; only the first may be")
        for key in ("tool_calls", "tools"):
            if message.get(key) is not None and not isinstance(message[key], str):
                raise ValueError(f"message {index} has {key} that are not JSON text")


def uses_tools(messages: Sequence[Message]) -> bool:
    """Whether a conversation has tool schemas, tool calls or tool results."""
    return any(m.get("tools") or m.get("tool_calls") or m["role"] == "tool" for m in messages)


def _for_jinja(message: Message) -> dict[str, Any]:
    """A message as chat templates read it: tool calls as objects; no empty fields (Arrow
    gives every message every field)."""
    result = {key: value for key, value in message.items()
              if value is not None and key != "tools"}
    if "tool_calls" in result:
        result["tool_calls"] = json.loads(result["tool_calls"])
    return result


def split_reasoning(message: Message) -> Message:
    """A reply whose content opens with its reasoning (``<think>R</think>answer``) with the
    two apart, as Qwen3's template splits it (the reasoning: the text before ``</think>``
    after any ``<think>``, newlines trimmed; the answer: after it, leading newlines trimmed);
    other messages as they are."""
    content = message["content"]
    if (message["role"] != "assistant" or message.get("reasoning_content") is not None
            or THINK_CLOSE not in content):
        return message
    reasoning = content.split(THINK_CLOSE)[0].rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
    return {**message, "content": content.split(THINK_CLOSE)[-1].lstrip("\n"),
            "reasoning_content": reasoning}


def _raise_exception(message: str) -> None:
    raise ValueError(message)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


@functools.lru_cache(maxsize=64)
def reads_tools(source: str) -> bool:
    """Whether a jinja template reads ``tools``, i.e. has a tool format."""
    import jinja2.meta

    environment = compile_jinja(source).environment
    return "tools" in jinja2.meta.find_undeclared_variables(environment.parse(source))


def reads_reasoning(source: str) -> bool:
    """Whether a jinja template shows a reply's reasoning: its ``reasoning_content``, or the
    part of its text before an inline ``</think>``."""
    return "reasoning_content" in source or "</think>" in source


@functools.lru_cache(maxsize=64)
def compile_jinja(source: str) -> Any:
    """The template compiled as transformers compiles chat templates (same environment
    options and helpers), so that both render the same text."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
    environment.filters["tojson"] = _tojson
    environment.globals.update(raise_exception=_raise_exception, strftime_now=_strftime_now)
    return environment.from_string(source)


def fill(part: str, special_tokens: Mapping[str, str], content: str = "") -> str:
    for name, value in special_tokens.items():
        part = part.replace("{" + name + "}", value)
    return part.replace("{content}", content)


def with_thinking(spec: TemplateSpec, enable_thinking: bool | None) -> TemplateSpec:
    """``spec`` passing ``enable_thinking`` to its jinja (--enable-thinking); None: as it is."""
    if enable_thinking is None:
        return spec
    return dataclasses.replace(spec, variables={**spec.variables,
                                                "enable_thinking": enable_thinking})


def broken_template(spec: TemplateSpec, problem: str) -> SdkError:
    return SdkError(f"Template '{spec.name}' {problem}. Fix it in the plugin that registers it "
                    "(`sdk templates` names the plugin), or pick another --template.")


def check_placeholders(spec: TemplateSpec, special_tokens: Mapping[str, str]) -> None:
    """Other braces in a parts template are literal text, but one close to a placeholder's
    name is a typo ({contents}, {eos}) that would be written into every sample."""
    known = {"content", "bos_token", "eos_token", *special_tokens}
    for part in PARTS:
        for name in PLACEHOLDER.findall(getattr(spec, part) or ""):
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            if name not in known and close:
                raise broken_template(spec, f"has {{{name}}} in its {part}: did you mean "
                                      f"{{{close[0]}}}? (other braces are written as they are)")


class Template:
    """A TemplateSpec bound to special tokens (``{bos_token}``, ``{eos_token}``): a
    tokenizer's, else the spec's own; missing ones render as they are written."""

    def __init__(self, spec: TemplateSpec, special_tokens: Mapping[str, str] | None = None):
        self.spec = spec
        self.special_tokens = {**spec.special_tokens, **(special_tokens or {})}
        if spec.jinja is None:
            check_placeholders(spec, self.special_tokens)
        else:
            import jinja2

            try:  # a template that does not compile fails here, before any row is encoded
                compile_jinja(spec.jinja)
            except jinja2.TemplateSyntaxError as error:
                raise broken_template(spec, "has jinja that does not compile: "
                                      f"{str(error).rstrip('.')} (line {error.lineno})") from None

    @classmethod
    def for_tokenizer(cls, spec: TemplateSpec, tokenizer: Any) -> Template:
        tokens = {name: getattr(tokenizer, name, None) for name in ("bos_token", "eos_token")}
        return cls(spec, {name: value for name, value in tokens.items() if value})

    def _fill(self, part: str, content: str = "") -> str:
        return fill(part, self.special_tokens, content)

    def pieces(self, messages: Sequence[Message], add_generation_prompt: bool = False,
               loss_scope: str = "all") -> Iterator[tuple[str, bool]]:
        """Yield (text, trained) pieces whose concatenation is the rendered conversation."""
        check_messages(messages)
        tools = messages[0].get("tools")
        if uses_tools(messages) and not (self.spec.jinja and reads_tools(self.spec.jinja)):
            kind = "a jinja template that never reads `tools`" if self.spec.jinja else (
                "a parts template")
            raise ValueError(f"it uses tools (schemas, calls or results), and template "
                             f"'{self.spec.name}' has no tool format ({kind}), so they would be "
                             "dropped; pick a template with one, e.g. qwen2.5")
        if self.spec.default_system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": self.spec.default_system}, *messages]
        replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        trained = set(replies if loss_scope == "all" else replies[-1:])
        if self.spec.jinja is not None:
            yield from self._jinja_pieces(messages, add_generation_prompt, trained,
                                          json.loads(tools) if tools else None)
        else:
            yield from self._part_pieces(messages, add_generation_prompt, trained)

    def _part_pieces(self, messages: Sequence[Message], add_generation_prompt: bool,
                     trained: set[int]) -> Iterator[tuple[str, bool]]:
        spec = self.spec
        yield self._fill(spec.prefix), False
        for index, message in enumerate(messages):
            if message["role"] == "system":
                yield self._fill(spec.system_format, message["content"]), False
            elif message["role"] == "user":
                yield self._fill(spec.user_format, message["content"]), False
            else:
                yield self._fill(spec.assistant_prefix), False
                yield message["content"], index in trained
                yield self._fill(spec.assistant_suffix), index in trained
                yield self._fill(spec.turn_separator), False
        if add_generation_prompt:
            yield self._fill(spec.assistant_prefix), False

    def _render_jinja(self, messages: Sequence[Message], add_generation_prompt: bool,
                      tools: list | None = None) -> str:
        import jinja2

        try:  # as transformers' apply_chat_template passes them
            return compile_jinja(self.spec.jinja).render(
                messages=[_for_jinja(m) for m in messages], tools=tools,
                add_generation_prompt=add_generation_prompt,
                **{**self.special_tokens, **self.spec.variables})
        except jinja2.TemplateError as error:  # raise_exception (a refusal) is a ValueError
            raise broken_template(self.spec, f"failed to render: {error}") from None

    def _jinja_pieces(self, messages: Sequence[Message], add_generation_prompt: bool,
                      trained: set[int], tools: list | None) -> Iterator[tuple[str, bool]]:
        """Render with the jinja template and place each trained reply, with the end-of-turn
        marker right after it, in the rendered text."""
        text = self._render_jinja(messages, add_generation_prompt, tools)
        split = [split_reasoning(m) for m in messages]
        replies = (self._replies_by_sentinel(messages, add_generation_prompt, text, tools)
                   # a reply opening with <think>...</think>, read as the template may split it
                   or (split != list(messages) and self._replies_by_sentinel(
                       split, add_generation_prompt, text, tools))
                   or self._replies_by_search(messages, text))
        replies = sorted(replies + self._tool_calls(messages, text, tools))
        suffix = self._fill(self.spec.assistant_suffix)
        spans = []
        for index, start, end in replies:
            if index not in trained:
                continue
            if self.spec.reasoning:
                start = self._reply_start(messages, index, start, text, tools)
            marker = text.find(suffix, end) if suffix else -1
            if marker >= 0 and not text[end:marker].strip():
                end = marker + len(suffix)
            spans.append((start, end))
        position = 0
        for start, end in spans:
            yield text[position:start], False
            yield text[start:end], True
            position = end
        yield text[position:], False

    def _reply_start(self, messages: Sequence[Message], index: int, start: int, text: str,
                     tools: list | None) -> int:
        """Where a reasoning template's reply ``index`` starts to be trained: at the end of
        the generation prompt for the conversation before it, when the text continues that
        prompt (its <think> block, reasoning or empty, is then what the model writes); else
        (--enable-thinking false: the prompt holds an empty block, the data has reasoning;
        an earlier turn whose reasoning the template drops) at the reply's answer."""
        prompt = self._render_jinja(messages[:index], True, tools)
        return len(prompt) if text.startswith(prompt) and len(prompt) <= start else start

    def _tool_calls(self, messages: Sequence[Message], text: str,
                    tools: list | None) -> list[tuple[int, int, int]]:
        """(message index, start, end) of every reply that calls tools: the text rendering it
        adds after the conversation before it and the reply's header (the generation
        prompt), found in the whole text (a template may place the schemas by what follows,
        as Mistral v0.3 does before the last user turn)."""
        spans, cursor = [], 0
        for index, message in enumerate(messages):
            if message["role"] != "assistant" or not message.get("tool_calls"):
                continue
            before = self._render_jinja(messages[:index], True, tools)
            through = self._render_jinja(messages[:index + 1], False, tools)
            call = through[len(before):].rstrip() if through.startswith(before) else ""
            start = text.find(call, cursor) if call else -1
            if start < 0 and THINK_CLOSE in call:
                # rendered last, the call had a <think> block that an earlier turn drops
                call = call.split(THINK_CLOSE)[-1].lstrip("\n")
                start = text.find(call, cursor) if call else -1
            if start < 0:
                raise ValueError(f"template '{self.spec.name}' does not show the tool call of "
                                 f"message {index} as it renders it alone, so its loss cannot "
                                 "be placed")
            cursor = start + len(call)
            spans.append((index, start, cursor))
        return spans

    def _replies_by_sentinel(self, messages: Sequence[Message], add_generation_prompt: bool,
                             text: str, tools: list | None) -> list[tuple[int, int, int]] | None:
        """(message index, start, end) of every reply, found exactly: render again with each
        reply replaced by a unique marker, then put each reply back as the template shows it
        (REPLY_VIEWS: the view that the real text continues with) and check that this gives
        the real text. None when it does not (a template that changes replies otherwise)."""
        marked = [dict(m, content=SENTINEL.format(i))
                  if m["role"] == "assistant" and not m.get("tool_calls") else dict(m)
                  for i, m in enumerate(messages)]
        pieces = SENTINEL_PATTERN.split(self._render_jinja(marked, add_generation_prompt, tools))
        rebuilt, replies = pieces[0], []
        for number, literal in zip(pieces[1::2], pieces[2::2], strict=True):
            index = int(number)
            shown = next((view(messages[index]["content"]) for view in REPLY_VIEWS
                          if text.startswith(view(messages[index]["content"]) + literal,
                                             len(rebuilt))), None)
            if shown is None:
                return None
            replies.append((index, len(rebuilt), len(rebuilt) + len(shown)))
            rebuilt += shown + literal
        if rebuilt == text and len({i for i, _, _ in replies}) == len(replies):
            return replies
        return None

    def _replies_by_search(self, messages: Sequence[Message],
                           text: str) -> list[tuple[int, int, int]]:
        """Fallback: find each message's (stripped) text after the previous one's."""
        cursor, replies = 0, []
        for index, message in enumerate(messages):
            content = message["content"].strip()
            if message["role"] == "system" or not content or message.get("tool_calls"):
                continue  # a system prompt may be moved, e.g. into the last user turn
            start = text.find(content, cursor)
            if start < 0:
                raise ValueError(f"template '{self.spec.name}' does not show message {index} "
                                 "as written, so its loss cannot be placed")
            cursor = start + len(content)
            if message["role"] == "assistant":
                replies.append((index, start, cursor))
        return replies

    def tokenize_prompt(self, tokenizer: Any, messages: Sequence[Message]) -> Any:
        """The generation prompt for ``messages`` as model inputs (PyTorch tensors)."""
        text = self.render(messages, add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=self.spec.add_special_tokens,
                         return_tensors="pt")

    def render(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        return "".join(text for text, _ in self.pieces(messages, add_generation_prompt))

    def encode(self, tokenizer: Any, messages: Sequence[Message],
               loss_scope: str = "all") -> tuple[list[int], list[int]]:
        """Token ids of the rendered text (exactly as the tokenizer splits the whole text) and
        labels that keep every token overlapping a trained piece: a BPE token may merge the
        space that ends a prompt part with the first word of the reply."""
        boundaries, trained, text = [], [], ""
        for piece, is_trained in self.pieces(messages, loss_scope=loss_scope):
            if piece:
                boundaries.append(len(text))
                trained.append(is_trained)
                text += piece
        encoding = tokenizer(text, add_special_tokens=self.spec.add_special_tokens,
                             return_offsets_mapping=True)
        input_ids = list(encoding["input_ids"])
        labels = []
        for token_id, (start, end) in zip(input_ids, encoding["offset_mapping"], strict=True):
            first = bisect.bisect_right(boundaries, start) - 1
            last = bisect.bisect_right(boundaries, max(start, end - 1)) - 1
            covered = trained[first:last + 1]
            labels.append(token_id if any(covered) else IGNORE_INDEX)
        return input_ids, labels

    def stop_words(self) -> list[str]:
        return stop_words(self.spec, self.special_tokens)


def stop_words(spec: TemplateSpec, special_tokens: Mapping[str, str]) -> list[str]:
    """Where generation stops: the end-of-turn marker, then the spec's other stop words."""
    words = [fill(word, special_tokens) for word in (spec.assistant_suffix, *spec.stop_words)]
    return [w for w in dict.fromkeys(words) if w]
