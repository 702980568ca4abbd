"""Built-in record formats: alpaca, OpenAI messages, query/response/history (also the older
ChatGLM prompt/query/response schema) and ShareGPT."""

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
    """query/response, and the older ChatGLM fine-tuning schema whose ``prompt`` is the
    instruction and ``query`` its input (joined like alpaca's instruction and input)."""
    parts = [_text(record, key, required=False) for key in ("prompt", "query")]
    query = "\n".join(part for part in parts if part)
    if not query:
        raise ValueError("field 'query' (or 'prompt') is missing or empty")
    return _with_system(record, _history(record) + [
        {"role": "user", "content": query},
        {"role": "assistant", "content": _text(record, "response")},
    ])


# ShareGPT role tags as the common exports write them. A tool call is the assistant's turn
# (its text is trained) and the tool's answer comes back on the user's side, as the
# LLaMA-Factory / ms-swift agent data alternate them.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                  "system": "system", "function_call": "assistant", "observation": "user",
                  "tool": "user"}


def sharegpt_to_messages(record: Mapping[str, Any]) -> Messages:
    """ShareGPT: {conversations: [{from: human|gpt|system, value}, ...], system?}; turns may
    also be written {role, content}."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'conversations' should be a non-empty list")
    messages = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, Mapping):
            raise ValueError(f"conversations[{index}] should be an object with from and value")
        tag = turn.get("from", turn.get("role"))
        role = SHAREGPT_ROLES.get(str(tag).lower()) if tag is not None else None
        if role is None:
            raise ValueError(f"conversations[{index}] has role tag {tag!r}; expected one of "
                             f"{', '.join(SHAREGPT_ROLES)}")
        value = turn.get("value", turn.get("content"))
        if not isinstance(value, str):
            raise ValueError(f"conversations[{index}] ({tag}) has no text 'value'")
        messages.append({"role": role, "content": value})
    return messages_to_messages({"messages": _with_system(record, messages)})


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
    return result


def has_keys(*keys: str):
    def detect(record: Mapping[str, Any]) -> bool:
        return all(key in record for key in keys)
    return detect


def has_response_and_query(record: Mapping[str, Any]) -> bool:
    return "response" in record and ("query" in record or "prompt" in record)


@hookimpl
def register_formats(register):
    register(DataFormat("messages", has_keys("messages"), messages_to_messages,
                        "OpenAI style: {messages: [{role, content}, ...]}"))
    register(DataFormat("alpaca", has_keys("instruction", "output"), alpaca_to_messages,
                        "instruction / input / output, optional system and history"))
    register(DataFormat("query-response", has_response_and_query, query_response_to_messages,
                        "query / response, or prompt / query / response (ChatGLM fine-tuning "
                        "schema); optional system and history"))
    register(DataFormat("sharegpt", has_keys("conversations"), sharegpt_to_messages,
                        "ShareGPT: {conversations: [{from: human|gpt|system|function_call|"
                        "observation, value}]}"))
