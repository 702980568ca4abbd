"""Built-in record formats: alpaca, OpenAI messages, and query/response/history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sdk.hookspecs import hookimpl
from sdk.specs import DataFormat

Messages = list[dict[str, str]]


def _text(record: Mapping[str, Any], key: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"field '{key}' is missing or empty")
        return ""
    if not isinstance(value, str):
        raise ValueError(f"field '{key}' should be text, got {type(value).__name__}")
    return value


def _history(record: Mapping[str, Any]) -> Messages:
    history = record.get("history") or []
    if not isinstance(history, list):
        raise ValueError("field 'history' should be a list of [query, response] pairs")
    messages: Messages = []
    for turn, pair in enumerate(history):
        if (not isinstance(pair, list | tuple) or len(pair) != 2
                or not all(isinstance(text, str) for text in pair)):
            raise ValueError(f"history turn {turn} should be a [query, response] pair of text")
        messages += [{"role": "user", "content": pair[0]},
                     {"role": "assistant", "content": pair[1]}]
    return messages


def _with_system(record: Mapping[str, Any], messages: Messages) -> Messages:
    system = _text(record, "system", required=False)
    return ([{"role": "system", "content": system}] if system else []) + messages


def alpaca_to_messages(record: Mapping[str, Any]) -> Messages:
    instruction = _text(record, "instruction")
    extra = _text(record, "input", required=False)
    query = f"{instruction}\n{extra}" if extra else instruction
    return _with_system(record, _history(record) + [
        {"role": "user", "content": query},
        {"role": "assistant", "content": _text(record, "output")},
    ])


def query_response_to_messages(record: Mapping[str, Any]) -> Messages:
    return _with_system(record, _history(record) + [
        {"role": "user", "content": _text(record, "query")},
        {"role": "assistant", "content": _text(record, "response")},
    ])


def messages_to_messages(record: Mapping[str, Any]) -> Messages:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' should be a non-empty list")
    result: Messages = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{index}] should be an object with role and content")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise ValueError(f"messages[{index}] has role {role!r}; "
                             "expected system, user or assistant")
        content = message.get("content")
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}] ({role}) has no text 'content'")
        result.append({"role": role, "content": content})
    if not any(m["role"] == "assistant" for m in result):
        raise ValueError("the conversation has no assistant message to learn from")
    return result


def has_keys(*keys: str):
    def detect(record: Mapping[str, Any]) -> bool:
        return all(key in record for key in keys)
    return detect


@hookimpl
def register_formats(register):
    register(DataFormat("messages", has_keys("messages"), messages_to_messages,
                        "OpenAI style: {messages: [{role, content}, ...]}"))
    register(DataFormat("alpaca", has_keys("instruction", "output"), alpaca_to_messages,
                        "instruction / input / output, optional system and history"))
    register(DataFormat("query-response", has_keys("query", "response"),
                        query_response_to_messages,
                        "query / response, optional system and history"))
