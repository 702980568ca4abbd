"""The model card (README.md) pushed with a checkpoint, and the run arguments as published.

Published arguments carry no secret and no local path: a folder or data file on the training
machine means nothing to the repository's readers and says more about that machine than they
need to know.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from sdk.config import SftArguments
from sdk.data.readers import READERS
from sdk.registry import Registry

# Arguments that name folders or files on the training machine (saved absolute).
LOCAL_PATH_ARGUMENTS = tuple(f.name for f in dataclasses.fields(SftArguments)
                             if f.metadata["path"] in ("path", "name=path"))
# Arguments that list datasets: names and hub ids are published, local files and folders not.
DATASET_ARGUMENTS = tuple(f.name for f in dataclasses.fields(SftArguments)
                          if f.metadata["path"] == "datasets")
SECRET_ARGUMENTS = tuple(f.name for f in dataclasses.fields(SftArguments)
                         if f.metadata["secret"])


def dataset_name(entry: str) -> str:
    """``alpaca-zh#500`` -> ``alpaca-zh``."""
    return entry.split("#")[0]


def is_local_path(value: str) -> bool:
    """A file or folder on this machine rather than a name or a hub id (``owner/name``)."""
    path = Path(value).expanduser()
    return (path.is_absolute() or value.startswith(".") or path.suffix.lower() in READERS
            or path.exists())


def public_arguments(saved: dict[str, Any]) -> dict[str, Any]:
    """The run's arguments as published: secrets left out, local paths made null, and of the
    datasets only names and hub ids kept."""
    public = {}
    for key, value in saved.items():
        if key in SECRET_ARGUMENTS:
            continue
        if key in DATASET_ARGUMENTS and isinstance(value, list):
            value = [entry for entry in value if not is_local_path(dataset_name(str(entry)))]
        elif key in LOCAL_PATH_ARGUMENTS or (isinstance(value, str)
                                              and Path(value).expanduser().is_absolute()):
            value = None
        public[key] = value
    return public


def final_metrics(checkpoint: Path) -> dict[str, Any]:
    """Step, epoch, last train loss and last eval loss up to this checkpoint, from its
    ``trainer_state.json`` (left out of the push by default, read here)."""
    state_file = checkpoint / "trainer_state.json"
    if not state_file.is_file():
        return {}
    state = json.loads(state_file.read_text(encoding="utf-8"))
    metrics: dict[str, Any] = {"step": state.get("global_step")}
    for record in state.get("log_history", []):
        for key in ("epoch", "loss", "eval_loss"):
            if key in record:
                metrics[key] = record[key]
    return metrics


def base_model_id(hub_ids: dict[str, str], hub: str) -> str | None:
    """The base model's id on ``hub``; None when it has none there or the id is a folder (the
    local hub's ids are paths)."""
    repo_id = hub_ids.get(hub)
    if not repo_id or Path(repo_id).expanduser().is_absolute() or repo_id.startswith("."):
        return None
    return repo_id


def relation(trains_adapters: bool, checkpoint: Path) -> str:
    if trains_adapters:
        return "adapter"
    config = checkpoint / "config.json"
    if config.is_file() and "quantization_config" in json.loads(config.read_text("utf-8")):
        return "quantized"
    return "finetune"


def adapter_rank_note(checkpoint: Path, saved: dict[str, Any]) -> str | None:
    """Why the checkpoint's LoRA adapter has another rank than the run's ``--lora-rank`` (shown
    among the training arguments), or None when it has that rank."""
    from sdk.tuners.lora import MUTATING_INITS

    config_file = checkpoint / "adapter_config.json"
    if not config_file.is_file() or "lora_rank" not in saved:
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    rank = config.get("r")
    if config.get("peft_type") != "LORA" or rank in (None, saved["lora_rank"]):
        return None
    if saved.get("init_lora_weights") in MUTATING_INITS and not saved.get("adapter"):
        why = (f"{saved['init_lora_weights']} adapters are saved converted to plain LoRA of "
               "twice the rank, which applies to the unchanged base model")
    else:
        why = "the run continued an adapter (--adapter), which keeps its own rank"
    return (f"The adapter has rank {rank} (adapter_config.json), not the run's --lora-rank "
            f"{saved['lora_rank']}: {why}.")


def layout_note(spec: Any, trains_adapters: bool) -> str | None:
    """For a model type whose official checkpoints are converted on load: what the pushed
    files apply to, and that the official remote code cannot load them."""
    if not spec.converted_to:
        return None
    converted = (f"`{spec.model_type}`'s official checkpoint, converted on load by sft-sdk to "
                 f"transformers' own `{spec.converted_to}` architecture (no remote code runs)")
    if trains_adapters:
        official = ("its module names are the official code's too, so it also loads onto the "
                    "official remote code (`trust_remote_code`)" if spec.keeps_official_names
                    else "it names that architecture's modules, so it does not load onto the "
                    "official remote code (`trust_remote_code`)")
        return (f"The adapter applies to {converted}: {official}. `sdk infer --ckpt-dir` "
                "rebuilds the model from the official checkpoint; `sdk export --merge-lora` "
                "writes a standard transformers folder.")
    return (f"The model is saved in the layout of {converted}: it loads with transformers "
            "alone, without `trust_remote_code`, and not with the official remote code.")


def gguf_section(model_type: str, gguf_type: str, files_folder: str) -> list[str]:
    """How to run the GGUF file pushed beside the checkpoint (`--push-gguf`)."""
    folder = f"{files_folder}/" if files_folder else ""
    name = f"{folder}{model_type}-{gguf_type}.gguf"
    return [
        "## GGUF", "",
        f"`{name}` is the model merged into one GGUF file ({gguf_type}) with its chat "
        "template, for llama.cpp, Ollama and LM Studio:", "",
        "```", f"llama-cli -m {name} -cnv", "```", "",
        f"With Ollama (when `{folder}Modelfile` is there: the template, default system "
        "prompt and stop words):", "",
        "```", f"cd <the downloaded repository>/{folder}".rstrip("/"),
        "ollama create my-model -f Modelfile", "ollama run my-model", "```", "",
    ]


def model_card(checkpoint: Path, saved: dict[str, Any], registry: Registry, hub: str,
               repo_id: str, files_folder: str = "", gguf_type: str | None = None) -> str:
    """README.md for ``checkpoint`` pushed to ``repo_id`` on ``hub``; ``files_folder`` is the
    folder of the repository that holds its files (empty: the repository's root); with
    ``gguf_type``, a GGUF file of the merged model is pushed beside them."""
    from huggingface_hub import ModelCardData

    spec = registry.get("models", saved["model_type"])
    tuner = registry.get("tuners", saved["sft_type"])
    base = base_model_id(dict(spec.hub_ids), hub)
    datasets = []  # a registered dataset by its id on this hub, if it has one
    for entry in public_arguments(saved).get("dataset", []):
        name = dataset_name(entry)
        known = registry.entries["datasets"].get(name)
        datasets.append(known and known.spec.hub_ids.get(hub) or name)
    data = ModelCardData(
        base_model=base, base_model_relation=relation(tuner.trains_adapters, checkpoint)
        if base else None,
        library_name="peft" if tuner.trains_adapters else "transformers",
        datasets=list(dict.fromkeys(datasets)) or None, pipeline_tag="text-generation",
        tags=list(dict.fromkeys(["sft-sdk", tuner.name, spec.model_type, spec.family])))
    metrics = final_metrics(checkpoint)
    kind = "adapter" if tuner.trains_adapters else "model"
    article = "An" if tuner.name[0] in "aeiou" else "A"
    about = (f"{article} {tuner.name} {kind} of `{spec.model_type}`"
             + (f" (`{base}`)" if base else ""))
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {repo_id.rstrip('/').rpartition('/')[2]}", "",
        f"{about}, fine-tuned with sft-sdk from `{checkpoint.name}`"
        + (f" (its files are in `{files_folder}/`)." if files_folder else "."), "",
        *((note, "") if (note := adapter_rank_note(checkpoint, saved)) else ()),
        *((note, "") if (note := layout_note(spec, tuner.trains_adapters)) else ()),
        "```",
        "sdk infer --ckpt-dir <the downloaded repository>",
        "```", "",
        *(gguf_section(spec.model_type, gguf_type, files_folder) if gguf_type else ()),
        "## Results", "",
        "| step | epoch | train loss | eval loss |", "|---|---|---|---|",
        "| " + " | ".join(_number(metrics.get(key))
                         for key in ("step", "epoch", "loss", "eval_loss")) + " |", "",
        "## Training arguments", "",
        "```json", json.dumps(public_arguments(saved), indent=2, ensure_ascii=False),
        "```", "",
    ]
    return "\n".join(lines)


def _number(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
