"""Checks of a checkpoint's files before anything loads them: a damaged file is refused with
``run_dir.damaged_checkpoint``'s message (naming the run's last complete checkpoint) instead of
a library's traceback, a silent partial load, or a resume that has already rewritten the log.

Only what is cheap to read is checked here: JSON files parse and hold the right types, a
safetensors file's header is valid and the file is as long as the header says (the 8-byte
header length and the JSON header, no torch), a LoRA adapter's tensors have the rank its
adapter_config.json gives, and the torch pickles a resume reads are whole zip archives.
Whether an adapter fits its base model needs the model: :func:`check_adapter_fits`. Last,
:func:`check_checkpoint` reads the weights themselves, which must be finite
(:func:`refuse_nonfinite_weights`: one sum a tensor)."""

from __future__ import annotations

import json
import math
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

from sdk.runs.run_dir import damaged_checkpoint

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TRAINER_STATE = "trainer_state.json"
# The config of the model an adapter was trained on, saved beside it: `sdk push`, which loads
# no model, builds that model's empty skeleton from it to see that the adapter fits.
BASE_CONFIG = "base_config.json"
NONFINITE_WEIGHTS = "its weights hold NaN or infinity"
_NUMBER = (int, float)
_NONE = type(None)
# The keys each JSON file must give the type of, where present; every such file is an object.
JSON_FILES: dict[str, dict[str, Any]] = {
    BASE_CONFIG: {"model_type": str},
    ADAPTER_CONFIG: {"peft_type": str, "r": int, "lora_alpha": _NUMBER,
                     "target_modules": (list, str, _NONE), "rank_pattern": (dict, _NONE),
                     "modules_to_save": (list, _NONE), "num_virtual_tokens": int},
    "config.json": {"model_type": str, "architectures": (list, _NONE)},
    "generation_config.json": {},
    "tokenizer.json": {"model": dict, "added_tokens": list},
    "tokenizer_config.json": {"chat_template": (str, list, _NONE)},
    "special_tokens_map.json": {},
    TRAINER_STATE: {"global_step": int, "epoch": (*_NUMBER, _NONE), "max_steps": int,
                    "log_history": list, "logging_steps": _NUMBER, "save_steps": _NUMBER,
                    "train_batch_size": (int, _NONE), "num_train_epochs": _NUMBER,
                    "best_metric": (*_NUMBER, _NONE), "best_model_checkpoint": (str, _NONE),
                    "stateful_callbacks": (dict, _NONE)},
}
# What a resume reads besides the weights (torch.save archives); inference needs none of them.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin")
# Bytes per element of the safetensors dtypes, to tell a header that lies about its sizes.
_DTYPE_BYTES = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2,
                "I16": 2, "U16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}
# The LoRA weights whose first (A) or second (B) dimension is the rank.
_LORA_A = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_(?:embedding_)?A(?:\.weight)?$")
_LORA_B = re.compile(r"^(?:base_model\.model\.)?(.+)\.lora_(?:embedding_)?B(?:\.weight)?$")


# The folders check_checkpoint passed in this process, with their files' (name, inode, size,
# mtime) then: a command resolves its checkpoint in more than one layer (export, then the
# inference loader), and the check reads every weight, so an unchanged folder passes once.
_PASSED: dict[tuple[Path, bool], frozenset] = {}


def files_state(folder: Path) -> frozenset:
    return frozenset((path.name, stat.st_ino, stat.st_size, stat.st_mtime_ns)
                     for path in folder.iterdir() if path.is_file()
                     for stat in (path.stat(),))


def check_checkpoint(folder: Path, resuming: bool = False) -> None:
    """Refuse a checkpoint (or export) folder with a damaged file; ``resuming`` also requires
    trainer_state.json and checks the training state a resume reads."""
    if not folder.is_dir():
        return check_files(folder, resuming)
    key, state = (folder.resolve(), resuming), files_state(folder)
    if _PASSED.get(key) == state:
        return
    check_files(folder, resuming)
    _PASSED[key] = state


def check_files(folder: Path, resuming: bool) -> None:
    if resuming and not (folder / TRAINER_STATE).is_file():
        raise damaged_checkpoint(folder / TRAINER_STATE, "missing; a resume restores the "
                                 "step, epoch and learning-rate schedule from it")
    documents = {name: read_json(folder / name) for name in JSON_FILES
                 if (folder / name).is_file()}
    for weights in sorted(folder.glob("*.safetensors")):
        tensors = safetensors_header(weights)
        if weights.name == ADAPTER_WEIGHTS and ADAPTER_CONFIG in documents:
            check_lora_ranks(weights, documents[ADAPTER_CONFIG], tensors)
    pickles = [*folder.glob("*.bin"), *(folder / name for name in TRAINING_STATE)]
    for archive in pickles:
        if archive.is_file() and (resuming or archive.name not in TRAINING_STATE):
            check_torch_archive(archive)
    if TRAINER_STATE in documents:
        check_log_history(folder / TRAINER_STATE, documents[TRAINER_STATE].get("log_history", []))
    refuse_nonfinite_weights(folder)


def read_json(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON file, an object whose keys named in JSON_FILES have their types."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise damaged_checkpoint(path, f"not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise damaged_checkpoint(path, f"a JSON {type(document).__name__}, not an object")
    for key, kind in JSON_FILES.get(path.name, {}).items():
        if key in document and not of_type(document[key], kind):
            raise damaged_checkpoint(path, f"{key} is {json.dumps(document[key])[:40]}, not "
                                     f"{type_names(kind)}")
    return document


def of_type(value: Any, kind: Any) -> bool:
    # JSON true/false are Python bools, which are ints too: no count or step is a bool
    return isinstance(value, kind) and not isinstance(value, bool)


def type_names(kind: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", _NONE: "null"}
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(dict.fromkeys(names[k] for k in kinds))


def check_log_history(path: Path, history: list[Any]) -> None:
    for entry in history:
        if not isinstance(entry, dict) or not of_type(entry.get("step", 0), int):
            raise damaged_checkpoint(path, f"log_history holds {json.dumps(entry)[:60]}, not "
                                     "an object with an integer step")


def safetensors_header(path: Path) -> dict[str, dict[str, Any]]:
    """The tensors a safetensors file describes (name: dtype, shape, data_offsets), after
    checking that the header is valid and that the file holds every byte it promises."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        start = handle.read(8)
        if len(start) < 8:
            raise damaged_checkpoint(path, f"{size} bytes, too short for a safetensors file")
        (length,) = struct.unpack("<Q", start)
        if length > size - 8:
            raise damaged_checkpoint(path, f"its header claims {length} bytes but the file has "
                                     f"{size}: truncated, or not a safetensors file")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise damaged_checkpoint(path, f"its header is not valid JSON: {error}") from None
    if not isinstance(header, dict):
        raise damaged_checkpoint(path, "its header is not a JSON object")
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    end = 0
    for name, entry in tensors.items():
        try:
            dtype, shape, (begin, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            elements = math.prod(shape)
        except (TypeError, KeyError, ValueError):
            raise damaged_checkpoint(path, f"its header entry for {name} is malformed") from None
        width = _DTYPE_BYTES.get(dtype)
        if width is not None and stop - begin != elements * width:
            raise damaged_checkpoint(path, f"{name} is {shape} {dtype} but has "
                                     f"{stop - begin} bytes")
        end = max(end, stop)
    if 8 + length + end != size:
        raise damaged_checkpoint(path, f"truncated: {size} bytes, its header describes "
                                 f"{8 + length + end}")
    return tensors


def check_torch_archive(path: Path) -> None:
    """A torch.save file is a zip archive, whose directory sits at its end: a file cut short
    has none."""
    try:
        with zipfile.ZipFile(path) as archive:
            archive.infolist()
    except (OSError, zipfile.BadZipFile) as error:
        raise damaged_checkpoint(path, f"not a whole torch archive: {error}") from None


def check_lora_ranks(path: Path, config: dict[str, Any], tensors: dict[str, Any]) -> None:
    """Every LoRA A/B weight has the rank adapter_config.json gives its module (``r``, or a
    ``rank_pattern`` entry): peft builds the layers from the config and cannot load others."""
    if config.get("peft_type") not in ("LORA", None) or not isinstance(config.get("r"), int):
        return  # AdaLoRA prunes its ranks; virtual-token tuners have none
    patterns = config.get("rank_pattern") or {}
    for name, entry in tensors.items():
        for expression, axis in ((_LORA_A, 0), (_LORA_B, 1)):
            match = expression.match(name)
            if match is None or len(entry["shape"]) <= axis:
                continue
            module = match.group(1)
            rank = next((r for pattern, r in patterns.items()
                         if re.fullmatch(rf"(.*\.)?{pattern}", module)), config["r"])
            if entry["shape"][axis] != rank:
                raise damaged_checkpoint(path, f"{name} has rank {entry['shape'][axis]} (shape "
                                         f"{entry['shape']}), {ADAPTER_CONFIG} gives it r "
                                         f"{rank}")


def check_adapter_fits(model: Any, checkpoint: Path) -> None:
    """The checkpoint's adapter weights are exactly those of ``model`` (the base model with
    its adapter layers built from the config), name for name and shape for shape: peft
    raises on a shape it cannot load, and loads around names it does not know, leaving
    layers untrained."""
    path = checkpoint / ADAPTER_WEIGHTS
    if not path.is_file():
        return
    from peft.utils import get_peft_model_state_dict

    expected = {name: list(tensor.shape)
                for name, tensor in get_peft_model_state_dict(model).items()}
    saved = {name: entry["shape"] for name, entry in safetensors_header(path).items()}
    foreign = sorted(saved.keys() - expected.keys())
    missing = sorted(expected.keys() - saved.keys())
    hint = "the adapter of another model, or of other settings"
    if foreign:
        raise damaged_checkpoint(path, f"{hint}: it holds {len(foreign)} weights this base "
                                 f"model has no place for, e.g. {foreign[0]}")
    if missing:
        raise damaged_checkpoint(path, f"{hint}: it lacks {len(missing)} of the adapter's "
                                 f"weights, e.g. {missing[0]}")
    for name, shape in saved.items():
        if shape != expected[name]:
            raise damaged_checkpoint(path, f"{hint}: {name} is {shape}, this base model needs "
                                     f"{expected[name]}")


def save_base_config(model: Any, checkpoint: Path) -> None:
    """Write the config of an adapter's base model into its checkpoint (nothing for a model
    without an adapter: its own config.json is there)."""
    if hasattr(model, "get_base_model"):
        model.get_base_model().config.to_json_file(checkpoint / BASE_CONFIG)


def refuse_nonfinite_weights(checkpoint: Path) -> None:
    """Refuse a checkpoint whose weight files (an adapter's or a whole model's safetensors)
    hold NaN or infinity; read before anything loads them. A file that cannot be read at all
    is left to the loader, which names what is damaged."""
    from safetensors import SafetensorError, safe_open

    for file in sorted(checkpoint.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                for name in weights.keys():
                    if holds_nonfinite(weights.get_tensor(name)):
                        raise damaged_checkpoint(file, f"{NONFINITE_WEIGHTS}: {name}")
        except (OSError, SafetensorError):
            continue


def holds_nonfinite(tensor: Any) -> bool:
    """Whether a float tensor holds NaN or infinity. Its sum is one when an element is, and
    takes a twentieth of ``isfinite`` on a CPU (a whole model's checkpoint is read before it
    loads); only a sum that overflowed needs the element-wise look."""
    import torch

    if not tensor.is_floating_point():
        return False
    if tensor.element_size() == 1:  # float8: torch sums and checks none of them
        tensor = tensor.to(torch.float16)
    return not torch.isfinite(tensor.sum()) and not torch.isfinite(tensor).all()
