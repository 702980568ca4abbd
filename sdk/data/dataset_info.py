"""``dataset_info.json`` files of LLaMA-Factory and ChatGLM-Efficient-Tuning: ``--dataset-info``.

The file maps a dataset name to an entry: ``file_name`` (relative to the file's folder; a
data file or a folder of them), ``formatting`` ("alpaca", the default, or "sharegpt"),
``columns`` (the file's column for each of our fields; "" means no such column) and, for
sharegpt, ``tags`` (the role and content keys and the role names). Each entry becomes a
DatasetSpec whose ``preprocess`` renames the file's columns onto the built-in "alpaca" or
"sharegpt" format's fields.

Preference entries (``ranking``) are refused rather than trained on their chosen replies: a
chosen reply is only the better of two, often not one worth imitating, and a DPO set's value
is the pair. KTO entries (``kto_tag``) say of each reply whether it is desirable, so the
desirable ones are trained and the others left out, with a notice of how many.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sdk.data.placeholders import fill_placeholders
from sdk.data.readers import READERS, is_saved_dataset, load_json_file
from sdk.errors import SdkError
from sdk.specs import DatasetSpec

# LLaMA-Factory's defaults (data/README.md); ChatGLM-Efficient-Tuning uses the alpaca ones.
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output",
                  "history": None, "system": None, "tools": None}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": None, "tools": None}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                 "assistant_tag": "gpt", "observation_tag": "observation",
                 "function_tag": "function_call", "system_tag": "system"}
# an entry's role tag -> the role name the built-in sharegpt format reads (SHAREGPT_ROLES)
OUR_ROLE = {"user_tag": "human", "assistant_tag": "gpt", "system_tag": "system",
            "observation_tag": "observation", "function_tag": "function_call"}
HUB_KEYS = {"hf_hub_url": "huggingface", "ms_hub_url": "modelscope"}
MEDIA_COLUMNS = ("images", "videos", "audios")


def read_dataset_info(path: str | Path) -> dict[str, Any]:
    """The parsed file (a folder stands for its ``dataset_info.json``)."""
    path = Path(path)
    if path.is_dir():
        path = path / "dataset_info.json"
    if not path.is_file():
        raise SdkError(f"--dataset-info: '{path}' does not exist. Give the path of a "
                       "dataset_info.json (LLaMA-Factory / ChatGLM-Efficient-Tuning).")
    data = load_json_file(path)
    if not isinstance(data, dict):
        raise SdkError(f"{path}: expected a JSON object of dataset name -> entry, got "
                       f"{type(data).__name__}.")
    return data


def info_file(path: str | Path) -> Path:
    path = Path(path)
    return path / "dataset_info.json" if path.is_dir() else path


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """" Did you mean 'x'?" for the closest of ``known``, or ""."""
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return (" Did you mean " + " or ".join(f"'{c}'" for c in close) + "?") if close else ""


def dataset_from_info(name: str, info_path: str | Path) -> DatasetSpec:
    """The DatasetSpec for entry ``name`` of the dataset_info.json at ``info_path``."""
    info = read_dataset_info(info_path)
    path = info_file(info_path)
    if name not in info:
        names = ", ".join(sorted(info)) or "none"
        raise SdkError(f"Dataset '{name}' is not defined in {path}.{did_you_mean(name, info)}"
                       f" The names there: {names}.")
    entry = info[name]
    where = f"Dataset '{name}' in {path}"
    if not isinstance(entry, dict):
        raise SdkError(f"{where}: expected an object with file_name, columns, ..., got "
                       f"{type(entry).__name__}.")
    if entry.get("ranking"):
        raise SdkError(f"{where} is preference data (\"ranking\": true: chosen and rejected "
                       "answers); supervised fine-tuning cannot train on it. Use a DPO/RM "
                       "tool, or pick an SFT dataset.")
    file_name = entry.get("file_name")
    hub_ids = {hub: entry[key] for key, hub in HUB_KEYS.items() if entry.get(key)}
    if not file_name and not hub_ids:
        if entry.get("script_url"):
            raise SdkError(f"{where} is loaded by a script ('{entry['script_url']}'), which "
                           "this SDK does not run. Convert the data to json/jsonl/csv/parquet "
                           "and point file_name at it.")
        raise SdkError(f"{where} has no file_name (nor hf_hub_url / ms_hub_url).")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in ("alpaca", "sharegpt"):
        raise SdkError(f"{where} has formatting '{formatting}'; supported: alpaca, sharegpt.")
    columns = entry.get("columns") or {}
    tags = entry.get("tags") or {}
    for key, value in (("columns", columns), ("tags", tags)):
        if not isinstance(value, dict):
            raise SdkError(f"{where}: '{key}' should be an object, got {type(value).__name__}.")
    media = [column for column in MEDIA_COLUMNS if columns.get(column)]
    if media:
        raise SdkError(f"{where} has {', '.join(media)} columns (multimodal data), which "
                       "this SDK does not train on.")
    kto_tag = columns.get("kto_tag") or None
    if formatting == "alpaca":
        given = {key for key, column in columns.items() if column}
        prompt_only = given == {"prompt"}
        if prompt_only or ("response" in columns and not columns["response"]):
            raise SdkError(f"{where} is pre-training text (a prompt column "
                           f"'{columns.get('prompt')}' and no response column); supervised "
                           "fine-tuning needs a response to learn. Use a pre-training tool, "
                           "or map columns.response to the answer column.")
        convert, data_format = _alpaca(_merged(ALPACA_COLUMNS, columns)), "alpaca"
    else:
        convert = _sharegpt(_merged(SHAREGPT_COLUMNS, columns), _merged(SHAREGPT_TAGS, tags))
        data_format = "sharegpt"
    # A hub entry's "folder" (or "subset", when the hub lays its configs out as folders)
    # narrows the repository's files; "split" picks among them.
    return DatasetSpec(name=name,
                       files=_files(path.parent / file_name, where) if file_name else (),
                       hub_ids=hub_ids, revision=entry.get("revision") or "main",
                       split=entry.get("split") or "train",
                       subset=entry.get("folder") or entry.get("subset"),
                       format=data_format, preprocess=_prepared(convert, where, kto_tag),
                       left_out=(f"its kto_tag column '{kto_tag}' is false: undesirable replies, "
                                 "which supervised fine-tuning would teach; the desirable "
                                 "ones are trained") if kto_tag else "",
                       description=f"{formatting} entry of {path}")


def _prepared(convert: Callable[[dict, Any], dict], where: str,
              kto_tag: str | None) -> Callable[[dict, Any], dict | None]:
    """The entry's preprocess: identity placeholders filled, then its columns renamed; a KTO
    row whose reply is undesirable is left out (None)."""
    identity = f"{where} (its rows hold {{{{name}}}} / {{{{author}}}} placeholders)"

    def preprocess(record: dict, args: Any = None) -> dict | None:
        if kto_tag is not None and not _desirable(record.get(kto_tag), where, kto_tag):
            return None
        return convert(fill_placeholders(record, args, identity), args)

    return preprocess


def _desirable(tag: Any, where: str, column: str) -> bool:
    """A KTO row's tag: true or false (also as CSV text)."""
    if isinstance(tag, str) and tag.strip().lower() in ("true", "false"):
        return tag.strip().lower() == "true"
    if not isinstance(tag, bool):
        raise SdkError(f"{where}: its kto_tag column '{column}' holds {tag!r}; each row needs "
                       "true (a desirable reply) or false (an undesirable one).")
    return tag


def _merged(defaults: Mapping[str, str | None], given: Mapping[str, Any]) -> dict[str, Any]:
    """The defaults overridden by the entry's values; "" (or null) means: no such column."""
    merged = {**defaults, **given}
    return {key: value or None for key, value in merged.items()}


def _files(path: Path, where: str) -> tuple[str, ...]:
    if path.is_file() or is_saved_dataset(path):
        return (str(path),)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir()
                       if p.is_file() and p.suffix.lower() in READERS)
        if not files:
            raise SdkError(f"{where}: folder '{path}' holds no "
                           f"{'/'.join(sorted(READERS))} files.")
        return tuple(files)
    raise SdkError(f"{where}: file_name '{path}' does not exist (file_name is relative to "
                   "the dataset_info.json's folder).")


def _json_list(value: Any) -> Any:
    """A list written as JSON text (a CSV cell), parsed; anything else as it is."""
    if isinstance(value, str) and value.lstrip()[:1] == "[":
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError):  # left as text: a bad record
            return value
    return value


def _column(record: Mapping[str, Any], column: str | None) -> Any:
    return record.get(column) if column else None


def _alpaca(columns: dict[str, Any]) -> Callable[[dict, Any], dict]:
    """prompt/query/response/history/system/tools columns -> instruction/input/output/..."""
    ours = {"instruction": "prompt", "input": "query", "output": "response",
            "history": "history", "system": "system", "tools": "tools"}

    def preprocess(record: dict, args: Any = None) -> dict:
        result = {field: _column(record, columns[key]) for field, key in ours.items()}
        result["history"] = _json_list(result["history"])
        return {field: value for field, value in result.items() if value is not None}

    return preprocess


def _sharegpt(columns: dict[str, Any], tags: dict[str, Any]) -> Callable[[dict, Any], dict]:
    """The entry's messages column and role/content tags -> {conversations: [{from, value}]}."""
    role_tag, content_tag = tags["role_tag"], tags["content_tag"]
    roles = {tags[key]: ours for key, ours in OUR_ROLE.items() if tags.get(key)}

    def turn(message: Any) -> Any:
        if not isinstance(message, Mapping):
            return message  # the format rejects it, naming the file and record
        role = message.get(role_tag)
        return {"from": roles.get(role, role) if isinstance(role, str) else role,
                "value": message.get(content_tag)}

    def preprocess(record: dict, args: Any = None) -> dict:
        messages = _json_list(_column(record, columns["messages"]))
        result: dict[str, Any] = {
            "conversations": [turn(m) for m in messages] if isinstance(messages, list)
            else messages}
        for field in ("system", "tools"):
            value = _column(record, columns[field])
            if value is not None:
                result[field] = value
        return result

    return preprocess
