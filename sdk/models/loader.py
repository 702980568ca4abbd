"""The generic loader: a local folder or a hub download, loaded with transformers."""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.hubs import default_hub
from sdk.models.rope import check_rope_flags
from sdk.options import hub_keywords
from sdk.specs import ModelSpec, resolve_callable

# The files of a checkpoint that hold weights: a download for the tokenizer alone leaves them out.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.ckpt", "*.h5",
                   "*.msgpack", "*.onnx")

# bitsandbytes warns on import that it cannot fetch an optional CPU kernel from the Hub;
# offline that is expected and says nothing about the run.
logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


@dataclass
class LoadOptions:
    dtype: str = "auto"
    trust_remote_code: bool = False
    attn_impl: str = "auto"  # --attn-impl
    model_dir: str | None = None  # a local folder that replaces the hub download
    download: Callable[[ModelSpec, bool], Path] | None = None  # (spec, with the weights)
    weights: bool = True  # False: the tokenizer alone (WEIGHT_PATTERNS not downloaded)
    quantization_bit: int = 0  # 4 or 8: bitsandbytes
    bnb_4bit_comp_dtype: str = "auto"
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True
    rope_scaling: str | None = None  # --rope-scaling linear|dynamic|yarn
    rope_factor: float | None = None  # None: context_length over the model's window
    context_length: int = 0  # --max-length of sdk sft


def quantization_config(options: LoadOptions) -> Any:
    """The bitsandbytes config of the QLoRA recipe for ``--quantization-bit 4|8``."""
    from transformers import BitsAndBytesConfig

    if options.quantization_bit == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = options.bnb_4bit_comp_dtype
    if compute == "auto":
        compute = options.dtype
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=options.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=options.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=torch_dtype(compute))


def unquantized_experts_notice(model: Any, bits: int) -> str | None:
    """What a ``bits``-bit bitsandbytes load left unquantized, where that is much: the fused
    MoE expert weights (3-d parameters, e.g. Qwen3-MoE's experts.gate_up_proj), which are not
    linear layers, the only ones bitsandbytes quantizes."""
    experts = [parameter for parameter in model.parameters() if parameter.dim() == 3]
    if not experts:
        return None
    count = sum(parameter.numel() for parameter in experts)
    return (f"--quantization-bit {bits}: bitsandbytes quantizes linear layers only; the "
            f"{count:,} weights of the fused MoE experts stay "
            f"{str(experts[0].dtype).removeprefix('torch.')} "
            "(QLoRA saves little memory on this model)")


def check_quantization(options: LoadOptions) -> None:
    if options.quantization_bit and importlib.util.find_spec("bitsandbytes") is None:
        raise SdkError("--quantization-bit needs bitsandbytes: pip install bitsandbytes")


def torch_dtype(name: str) -> Any:
    """``auto`` is bf16 on a GPU that supports it, else fp16 on a GPU, else fp32 on the CPU."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def check_supported(spec: ModelSpec) -> None:
    if spec.unsupported:
        raise SdkError(f"Model type '{spec.model_type}' cannot run here: {spec.unsupported}")


def check_requirements(spec: ModelSpec, options: LoadOptions) -> None:
    """A model type that cannot run first, then the user's consent to remote code (nothing
    to install without it), then the packages the model needs."""
    check_supported(spec)
    if spec.requires_remote_code and not options.trust_remote_code:
        raise SdkError(f"Model type '{spec.model_type}' runs code from its model repository. "
                       "Pass --trust-remote-code if you trust that code.")
    missing = [p for p in spec.requires if importlib.util.find_spec(p) is None]
    if missing:
        raise SdkError(f"Model type '{spec.model_type}' needs the package(s) "
                       f"{', '.join(missing)}: pip install {' '.join(missing)}")


def load_pretrained(path: str | Path, options: LoadOptions, gguf_file: str | None = None,
                    model_kwargs: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Model and tokenizer from a folder in the transformers layout (or a GGUF file in it);
    ``model_kwargs`` go to the model's ``from_pretrained`` (e.g. a loader's own quantization
    config)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    extra: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(
        str(path), trust_remote_code=options.trust_remote_code, **extra)
    if options.rope_scaling:
        from transformers import AutoConfig

        from sdk.models.rope import stretch_rope

        config = AutoConfig.from_pretrained(
            str(path), trust_remote_code=options.trust_remote_code, **extra)
        stretch_rope(config, options.rope_scaling, options.rope_factor,
                     options.context_length, str(path))
        extra["config"] = config
    if gguf_file:
        # Dense weights: trainable and savable, unlike weights kept in GGUF blocks.
        from transformers import GgufConfig

        extra["quantization_config"] = GgufConfig(dequantize=True)
    elif options.quantization_bit:
        import torch

        extra["quantization_config"] = quantization_config(options)
        # bitsandbytes quantizes while placing the weights: on the GPU, else on the CPU (its
        # CPU backend)
        extra["device_map"] = {"": 0 if torch.cuda.is_available() else "cpu"}
    dtype = torch_dtype(options.dtype)
    kernel = attention_implementation(options.attn_impl, dtype)
    if kernel:
        extra["attn_implementation"] = kernel
    extra.update(model_kwargs or {})
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=dtype, trust_remote_code=options.trust_remote_code, **extra)
    except (ValueError, ImportError) as error:
        if not kernel or "attention implementation" not in str(error):
            raise
        raise SdkError(f"--attn-impl {kernel} does not work with the model in {path}: "
                       f"{error} Pick another --attn-impl (sdpa or eager).") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# what each kernel needs besides the GPU, as a package to import and one to pip install
FLASH_PACKAGES = {"flash_attention_2": ("flash_attn", "flash-attn"),
                  "flash_attention_3": ("flash_attn_interface", "flash-attn-3")}


def attention_implementation(requested: str, dtype: Any) -> str | None:
    """The ``attn_implementation`` to load with for ``--attn-impl`` (None: transformers'
    choice); a flash kernel that cannot run here is an error before anything loads."""
    import torch

    half = dtype in (torch.bfloat16, torch.float16)
    if requested == "auto":
        if (torch.cuda.is_available() and half
                and importlib.util.find_spec(FLASH_PACKAGES["flash_attention_2"][0])):
            return "flash_attention_2"
        return None
    if requested == "flex_attention" and not torch.cuda.is_available():
        raise SdkError("--attn-impl flex_attention needs a CUDA GPU (on a CPU it cannot "
                       "train); use sdpa or eager here.")
    if requested in FLASH_PACKAGES:
        module, package = FLASH_PACKAGES[requested]
        if not torch.cuda.is_available():
            raise SdkError(f"--attn-impl {requested} needs a CUDA GPU; use sdpa or eager here.")
        if importlib.util.find_spec(module) is None:
            raise SdkError(f"--attn-impl {requested} needs the {package} package: pip install "
                           f"{package} (or use --attn-impl sdpa).")
        if not half:
            raise SdkError(f"--attn-impl {requested} runs in bf16 or fp16 only: add --dtype bf16.")
    return requested


def model_folder(spec: ModelSpec, options: LoadOptions) -> Path:
    """``--model-id-or-path``, else the hub copy."""
    if options.model_dir:
        return Path(options.model_dir)
    if options.download is not None:
        return options.download(spec, options.weights)
    raise SdkError(f"Model type '{spec.model_type}' has no local copy: pass "
                   "--model-id-or-path DIR.")


def load_from_hub(spec: ModelSpec, options: LoadOptions) -> tuple[Any, Any]:
    """The loader of model specs that name none: ``--model-id-or-path`` or the hub copy."""
    return load_pretrained(model_folder(spec, options), options)


def tokenizer_from_folder(spec: ModelSpec, options: LoadOptions) -> Any:
    """The tokenizer loader of model specs that name none."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_folder(spec, options)),
                                         trust_remote_code=options.trust_remote_code)


def load_model(spec: ModelSpec, args: Any, registry: Any) -> tuple[Any, Any]:
    """Load a model type with the flags in ``args`` (dtype, --model-id-or-path, --hub ...)."""
    options = load_options(spec, args, registry)
    check_quantization(options)
    return resolve_callable(spec.loader or load_from_hub)(spec, options)


def load_tokenizer(spec: ModelSpec, args: Any, registry: Any) -> Any:
    """The model type's tokenizer alone: a hub download leaves the weight files out, and a
    converted family converts its tokenizer only. With --tokenizer-id-or-path, that folder's
    tokenizer, refused when its vocabulary is larger than the model's (config.json)."""
    options = replace(load_options(spec, args, registry), weights=False)
    other = getattr(args, "tokenizer_id_or_path", None)
    if not other:
        return resolve_callable(spec.tokenizer_loader or tokenizer_from_folder)(spec, options)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(other, trust_remote_code=options.trust_remote_code)
    config = model_folder(spec, options) / "config.json"
    if config.is_file():  # else checked against the embeddings once the model has loaded
        check_tokenizer_fits(tokenizer, folder_config(config.parent).get("vocab_size"), other)
    return tokenizer


def sentencepiece_file(tokenizer: Any) -> Path | None:
    """The SentencePiece model file (tokenizer.model) a tokenizer was loaded with, if it is
    at hand: transformers 5 keeps its path but no longer saves the file with the tokenizer."""
    model_file = Path(getattr(tokenizer, "vocab_file", None) or "")
    return model_file if model_file.suffix == ".model" and model_file.is_file() else None


def check_tokenizer_fits(tokenizer: Any, vocab_size: Any, folder: str) -> None:
    """A token id past the model's embeddings has no row to look up: refuse the tokenizer."""
    if isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
        raise SdkError(
            f"--tokenizer-id-or-path '{folder}' has {len(tokenizer)} tokens and the model's "
            f"embeddings have {vocab_size} rows: its new tokens have no embedding. Train "
            "from a model whose embeddings were resized to that vocabulary (Chinese-LLaMA-2 "
            "for Chinese-LLaMA-Alpaca-2's tokenizer); resizing them here and training them "
            "(--lora-modules-to-save embed_tokens lm_head) is not done by sdk.")


def tokenizer_alone(spec: ModelSpec, args: Any) -> bool:
    """Whether the tokenizer can be read without the weights: a model type whose plugin has
    its own loader and no tokenizer_loader finds its files only as it loads the model, unless
    --model-id-or-path is a folder with a transformers tokenizer (or --tokenizer-id-or-path
    gives one)."""
    return bool(spec.tokenizer_loader or not spec.loader
                or getattr(args, "tokenizer_id_or_path", None) or (
                    args.model_id_or_path
                    and (Path(args.model_id_or_path) / "tokenizer_config.json").is_file()))


def load_options(spec: ModelSpec, args: Any, registry: Any) -> LoadOptions:
    """The load options for ``args``, after the checks every loader needs."""
    hub = registry.get("hubs", args.hub or default_hub())

    def download(model_spec: ModelSpec, weights: bool = True) -> Path:
        repo_id = model_spec.hub_ids.get(hub.name)
        if not repo_id:
            unknown = [name for name in model_spec.hub_ids if name not in registry.entries["hubs"]]
            owner = registry.entries["models"].get(model_spec.model_type)
            blame = (f" Its hub_ids name {', '.join(map(repr, unknown))}, which no plugin "
                     f"registers as a hub: fix plugin {owner.plugin} ({owner.where})."
                     if unknown and owner else "")
            raise SdkError(f"Model type '{model_spec.model_type}' has no id on hub "
                           f"'{hub.name}' (it has: {', '.join(model_spec.hub_ids) or 'none'})."
                           f"{blame} Pick another --hub or pass --model-id-or-path DIR.")
        return Path(resolve_callable(hub.download)(
            repo_id, model_spec.revision,
            (*model_spec.ignore_patterns, *(() if weights else WEIGHT_PATTERNS)),
            **hub_keywords(hub, args)))

    options = LoadOptions(
        dtype=args.dtype, trust_remote_code=args.trust_remote_code, attn_impl=args.attn_impl,
        model_dir=args.model_id_or_path, download=download,
        quantization_bit=args.quantization_bit or 0, bnb_4bit_comp_dtype=args.bnb_4bit_comp_dtype,
        bnb_4bit_quant_type=args.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=args.bnb_4bit_use_double_quant,
        rope_scaling=args.rope_scaling, rope_factor=args.rope_factor,
        # inference has no --max-length: it gets the trained run's --rope-factor
        context_length=getattr(args, "max_length", 0))
    check_rope_flags(options.rope_scaling, options.rope_factor)
    check_requirements(spec, options)  # for every loader, a plugin's own included
    if options.model_dir:
        check_model_folder(spec, Path(options.model_dir), registry)
    return options


def check_model_folder(spec: ModelSpec, folder: Path, registry: Any) -> None:
    """``--model-id-or-path`` is a model folder of the kind ``spec`` declares (its
    ``config_model_types``), checked before anything loads: trained as another family, a
    model gets that family's chat template and LoRA targets and learns the wrong format."""
    settings = folder_config(folder)
    found = settings.get("model_type")
    if (not spec.config_model_types or not isinstance(found, str)
            or found in spec.config_model_types):
        return
    classes = settings.get("architectures")
    architectures = ", ".join(map(str, classes)) if isinstance(classes, list) else ""
    expected = " or ".join(spec.config_model_types)
    raise SdkError(
        f"--model-id-or-path '{folder}' holds a {found} model"
        f"{f' ({architectures})' if architectures else ''}, but --model-type "
        f"{spec.model_type} is a {expected} model: its chat template and LoRA targets would "
        f"not fit. Pick the --model-type of the folder's model"
        f"{fitting_model_types(found, registry)}; `sdk models` lists them. Or give "
        f"--model-id-or-path a folder of {spec.model_type} itself.")


def folder_config(folder: Path) -> dict[str, Any]:
    """The settings in the config.json of the --model-id-or-path folder ``folder``."""
    config = folder / "config.json"
    if not config.is_file():
        raise SdkError(f"--model-id-or-path '{folder}' is not a model folder "
                       "(no config.json in it).")
    try:
        settings = json.loads(config.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SdkError(f"--model-id-or-path '{folder}': {config.name} is not valid JSON "
                       f"({error}).") from None
    return settings if isinstance(settings, dict) else {}


def fitting_model_types(found: str, registry: Any) -> str:
    """`` (a, b, ...)``: the registered model types whose checkpoints are ``found`` models
    (a config.json's model_type), or that none is."""
    matching = [name for name, entry in sorted(registry.entries["models"].items())
                if found in entry.spec.config_model_types]
    return (f" ({', '.join(matching[:4])}{', ...' if len(matching) > 4 else ''})"
            if matching else f" (no installed one is a {found} model: a plugin can add it)")


def model_types_for_folder(path: str, registry: Any) -> str:
    """For a --model-id-or-path given without --model-type: the model types that fit the
    folder's config.json, as a sentence ("" when the folder does not say)."""
    folder = Path(path)
    if not (folder / "config.json").is_file():
        return ""
    found = folder_config(folder).get("model_type")
    if not isinstance(found, str):
        return ""
    return (f" '{path}' holds a {found} model; the model types of {found} models"
            f"{fitting_model_types(found, registry)}.")


def cache_dir() -> Path:
    """Where converted models are kept: ``$SFT_SDK_CACHE`` or ``~/.cache/sft-sdk``."""
    import os

    return Path(os.environ.get("SFT_SDK_CACHE") or Path.home() / ".cache" / "sft-sdk")
