"""Built-in record formats: alpaca, OpenAI messages, query/response/history (also the older
ChatGLM prompt/query/response schema) and ShareGPT."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from sdk.hookspecs import hookimpl
from sdk.specs import DataFormat

# A message's role and text, and for tool use: an assistant's ``tool_calls`` and the
# conversation's ``tools`` (on its first message), each as JSON text, and a tool result's
# ``tool_call_id``; an assistant's separate reasoning as ``reasoning_content``.
Messages = list[dict[str, str]]
# Where rows keep a reply's reasoning apart from its text: ``reasoning_content`` (OpenAI-style
# APIs of reasoning models, DeepSeek's and Qwen's, and the key Qwen3's chat template reads),
# ``thinking`` (ms-swift and LLaMA-Factory data); on a message or ShareGPT turn, or on an alpaca
# or query/response record for its reply.
REASONING_KEYS = ("reasoning_content", "thinking")


def _reasoning(holder: Mapping[str, Any], where: str) -> str | None:
    """The reasoning that ``holder`` (a message or record) keeps under one of REASONING_KEYS."""
    found = [key for key in REASONING_KEYS if holder.get(key) is not None]
    if len(found) > 1:
        raise ValueError(f"{where} has both {found[0]!r} and {found[1]!r}; keep one")
    if not found:
        return None
    value = holder[found[0]]
    if not isinstance(value, str):
        raise ValueError(f"{where} field '{found[0]}' should be text, got "
                         f"{type(value).__name__}")
    return value


def _with_reasoning(record: Mapping[str, Any], messages: Messages) -> Messages:
    """A record-level reasoning field put on its last reply."""
    reasoning = _reasoning(record, "the record")
    if reasoning is not None:
        messages[-1]["reasoning_content"] = reasoning
    return messages


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
    return messages_to_messages({"tools": record.get("tools"), "messages": _with_system(
        record, _with_reasoning(record, _history(record) + [
            {"role": "user", "content": query},
            {"role": "assistant", "content": _text(record, "output")}]))})


def query_response_to_messages(record: Mapping[str, Any]) -> Messages:
    """query/response, and the older ChatGLM fine-tuning schema whose ``prompt`` is the
    instruction and ``query`` its input (joined like alpaca's instruction and input)."""
    parts = [_text(record, key, required=False) for key in ("prompt", "query")]
    query = "\n".join(part for part in parts if part)
    if not query:
        raise ValueError("field 'query' (or 'prompt') is missing or empty")
    return _with_system(record, _with_reasoning(record, _history(record) + [
        {"role": "user", "content": query},
        {"role": "assistant", "content": _text(record, "response")},
    ]))


# ShareGPT role tags as the common exports write them. A function call is the assistant's
# turn (trained): JSON {name, arguments} (LLaMA-Factory) becomes OpenAI's tool_calls and the
# observation after it the tool's answer (role "tool"), as the official chat templates of
# tool-calling models take them; a call written as text (ReAct's "Action: ...") stays the
# assistant's text and its observation a user turn.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                  "system": "system", "function_call": "function_call", "observation": "tool",
                  "tool": "tool"}


def _json(text: Any, what: str) -> Any:
    """A JSON value written as text (as LLaMA-Factory's files write tools and calls)."""
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{what} is not valid JSON") from None


def _arguments(value: Any, what: str) -> Any:
    """A call's arguments as an object: OpenAI's API writes them as JSON text, the chat
    templates read them as an object (transformers asks for a dict; ChatGLM3's writes each
    argument as key=value, InternLM2's the object within its call)."""
    if not isinstance(value, str):
        return value
    arguments = _json(value, what)
    if not isinstance(arguments, Mapping):
        raise ValueError(f"{what} should be a JSON object")
    return arguments


def _tool_calls(value: str, first_id: int) -> str | None:
    """A function-call turn ({name, arguments}, or a list of them) as OpenAI tool_calls, as
    JSON text (a message holds only text, through Arrow too); None when it is not JSON calls
    (a ReAct-style "Action: ..." text). The calls are numbered from ``first_id`` in ids of 9
    letters and digits, the form Mistral's template requires."""
    try:
        calls = json.loads(value)
    except json.JSONDecodeError:
        return None
    calls = calls if isinstance(calls, list) else [calls]
    if not calls or not all(isinstance(call, Mapping) and isinstance(call.get("name"), str)
                            for call in calls):
        return None
    return json.dumps([{"type": "function", "id": f"call{first_id + number:05d}",
                        "function": {"name": call["name"], "arguments": _arguments(
                            call.get("arguments"), f"the arguments of call {call['name']!r}")}}
                       for number, call in enumerate(calls)], ensure_ascii=False)


def _tools(record: Mapping[str, Any]) -> str | None:
    """The record's tool schemas as OpenAI tools ({type: function, function: schema}), as
    JSON text; None without any."""
    tools = _json(record.get("tools") or None, "field 'tools'")
    if tools is None:
        return None
    if not isinstance(tools, list) or not all(isinstance(tool, Mapping) for tool in tools):
        raise ValueError("field 'tools' should be a list of function schemas")
    return json.dumps([tool if "type" in tool else {"type": "function", "function": tool}
                       for tool in tools], ensure_ascii=False) if tools else None


def sharegpt_to_messages(record: Mapping[str, Any]) -> Messages:
    """ShareGPT: {conversations: [{from: human|gpt|system|function_call|observation, value}],
    system?, tools?}; turns may also be written {role, content}."""
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise ValueError("field 'conversations' should be a non-empty list")
    messages: Messages = []
    pending: list[str] = []  # ids of the calls whose results come next
    called = False  # the last function call was JSON calls: its observation is their result
    calls_made = 0
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
        if role == "function_call":
            calls = _tool_calls(value, calls_made + 1)
            called = calls is not None
            pending = [call["id"] for call in json.loads(calls)] if called else []
            calls_made += len(pending)
            messages.append({"role": "assistant", "content": "", "tool_calls": calls}
                            if called else {"role": "assistant", "content": value})
        elif role == "tool" and called:
            messages.append({"role": "tool", "content": value})
            if pending:  # results answer the calls in order
                messages[-1]["tool_call_id"] = pending.pop(0)
        elif role == "tool":  # the answer to a call written as text: on the user's side
            messages.append({"role": "user", "content": value})
        else:
            messages.append({"role": role, "content": value})
            reasoning = _reasoning(turn, f"conversations[{index}]")
            if reasoning is not None:
                messages[-1]["reasoning_content"] = reasoning
    return messages_to_messages({"messages": _with_system(record, messages),
                                 "tools": record.get("tools")})


def messages_to_messages(record: Mapping[str, Any]) -> Messages:
    """OpenAI messages, also with tool calls and results; the record's ``tools`` (schemas)
    travel on its first message."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("field 'messages' should be a non-empty list")
    result: Messages = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{index}] should be an object with role and content")
        role = message.get("role")
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(f"messages[{index}] has role {role!r}; "
                             "expected system, user, assistant or tool")
        content = message.get("content")
        calls = message.get("tool_calls") if role == "assistant" else None
        if content is None and calls:
            content = ""
        if not isinstance(content, str):
            raise ValueError(f"messages[{index}] ({role}) has no text 'content'")
        result.append({"role": role, "content": content})
        reasoning = _reasoning(message, f"messages[{index}]")
        if reasoning is not None:
            if role != "assistant":
                raise ValueError(f"messages[{index}] ({role}) has reasoning; only an "
                                 "assistant's reply may")
            result[-1]["reasoning_content"] = reasoning
        if role == "tool" and isinstance(message.get("tool_call_id"), str):
            result[-1]["tool_call_id"] = message["tool_call_id"]
        if calls:
            calls = _json(calls, f"messages[{index}] tool_calls")
            if not isinstance(calls, list):
                raise ValueError(f"messages[{index}] tool_calls should be a list")
            for number, call in enumerate(calls):
                function = call.get("function") if isinstance(call, Mapping) else None
                if isinstance(function, Mapping) and "arguments" in function:
                    calls[number] = {**call, "function": {**function, "arguments": _arguments(
                        function["arguments"], f"messages[{index}] tool_calls[{number}] "
                                               "arguments")}}
            result[-1]["tool_calls"] = json.dumps(calls, ensure_ascii=False)
    tools = _tools(record)
    if tools is not None:
        result[0]["tools"] = tools
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
