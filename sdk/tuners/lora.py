"""LoRA and its variants (DoRA, rank-stabilised LoRA) through peft; adapters of any peft
tuner reload with ``load``."""

from __future__ import annotations

import json
import re
import shutil
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from sdk.errors import SdkError
from sdk.runs.checkpoint_files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BASE_CONFIG,
    check_adapter_fits,
    check_checkpoint,
    read_json,
)
from sdk.runs.run_dir import damaged_checkpoint
from sdk.specs import ModelSpec
from sdk.tuners.generation import generates_with_virtual_tokens

ALL_LINEAR = {"all", "all-linear", "all_linear"}

# peft 0.21 reads an attribute that transformers 5.24 renamed; the warning is about the two
# libraries, not about anything a user can change.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                        category=FutureWarning)


def target_modules(requested: list[str] | None, spec: ModelSpec) -> str | list[str]:
    names = list(requested or spec.lora_target_modules)
    if any(name.lower() in ALL_LINEAR for name in names):
        return "all-linear"
    return names


def parameter_targets(model: Any, names: str | list[str]) -> tuple[str | list[str], list[str]]:
    """``names`` split into modules and weights: a name that ends no module's path but a
    weight's (transformers keeps a MoE's experts as fused 3-D weights, not nn.Linear) goes to
    peft's ``target_parameters``."""
    if isinstance(names, str):
        return names, []
    modules = [name for name, _ in model.named_modules()]
    weights = [name for name, _ in model.named_parameters()]

    def ends(paths: list[str], name: str) -> bool:
        return any(path == name or path.endswith("." + name) for path in paths)

    parameters = [name for name in names if name not in ("weight", "bias")
                  and not ends(modules, name) and ends(weights, name)]
    return [name for name in names if name not in parameters], parameters


def with_adapters(model: Any, config: Any) -> Any:
    """peft's model with the adapters of ``config``; targets that name no module of the model
    are an error naming --lora-target-modules and the names it has."""
    from peft import get_peft_model

    quantized = quantized_linear_names(model)
    if quantized and config.target_modules == "all-linear":
        # peft's all-linear looks for nn.Linear only, and GPTQ layers (gptqmodel's
        # QuantLinear, which peft does wrap when named) are not: it would find nothing
        config.target_modules = quantized
    try:
        with gptqmodel_only_for_gptq(model):
            return get_peft_model(model, config)
    except ValueError as error:
        if "not found in the base model" not in str(error):
            raise
        import torch

        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise SdkError(f"--lora-target-modules {' '.join(sorted(config.target_modules))}: no such "
                       f"module in {type(model).__name__}. Its linear layers are: "
                       f"{', '.join(linear)} (or give all-linear).") from None


def quantized_linear_names(model: Any) -> list[str]:
    """The names of a model's linear layers held by a quantization kernel that is no
    nn.Linear (those with a packed ``qweight``: GPTQ), as --lora-target-modules lists them."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if hasattr(module, "qweight") and hasattr(module, "in_features")})


@contextmanager
def gptqmodel_only_for_gptq(model: Any) -> Iterator[None]:
    """peft imports gptqmodel, when installed, to test each layer it wraps for a GPTQ kernel.
    That import (its tokenicer) creates folders under HF_HOME, which fails under a read-only
    home, and sets HF_HOME when unset: a model with no GPTQ layer is not tested."""
    import peft  # noqa: F401  (its modules are all imported, so all of them are switched)

    if quantized_linear_names(model) or "gptqmodel" in sys.modules:
        yield
        return
    switched = {module: module.is_gptqmodel_available for module in list(sys.modules.values())
                if getattr(module, "__name__", "").startswith("peft.")
                and hasattr(module, "is_gptqmodel_available")}
    for module in switched:
        module.is_gptqmodel_available = lambda: False
    try:
        yield
    finally:
        for module, original in switched.items():
            module.is_gptqmodel_available = original


def ready_for_adapters(model: Any, args: Any) -> Any:
    """The base made ready for adapters (peft freezes it), quantized or not, in the dtype it was
    loaded in. peft's prepare_model_for_kbit_training is not used: it casts the embeddings,
    norms and output layer of a 4/8-bit model to fp32, which makes every activation between
    the quantized layers fp32 (qwen2.5-7b QLoRA on an H200: a seventh of the speed, 1.6-1.7x
    the memory)."""
    if args.gradient_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-carrying input
    return model


WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
OLDER_WEIGHT_FILE = "pytorch_model.bin"  # what Chinese-Vicuna / alpaca-lora checkpoints hold


def continue_adapter(model: Any, adapter: str) -> Any:
    """The base model with a saved peft adapter on it, its weights trainable again."""
    from peft import PeftConfig, PeftModel

    folder, staged = Path(adapter), None
    if not (folder / "adapter_config.json").is_file():
        raise SdkError(f"--adapter '{adapter}' has no adapter_config.json; give the folder a "
                       "peft adapter was saved to.")
    try:
        config = PeftConfig.from_pretrained(str(folder))
    except (KeyError, TypeError, ValueError) as error:
        raise SdkError(f"--adapter '{adapter}': its adapter_config.json is not a peft adapter "
                       f"config ({error}).") from None
    if config.is_prompt_learning:
        raise SdkError(f"--adapter '{adapter}' holds a {config.peft_type.value} adapter; peft "
                       "cannot train saved virtual tokens further (prefix, ptuning, prompt). "
                       "Start a new run.")
    if getattr(config, "r", None):
        targets = config.target_modules
        targets = targets if isinstance(targets, str) else ", ".join(sorted(targets or ()))
        click.echo(f"[sdk] --adapter: training on with its own settings (rank {config.r}, "
                   f"targets {targets}); --lora-rank and --lora-target-modules do not apply.",
                   err=True)
    check_checkpoint(folder)
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        if not (folder / OLDER_WEIGHT_FILE).is_file():
            raise SdkError(f"--adapter '{adapter}' holds no adapter weights ("
                           f"{', '.join(WEIGHT_FILES)} or {OLDER_WEIGHT_FILE}).")
        # peft reads adapter_model.bin; older tools saved the same state dict under this name
        staged = Path(tempfile.mkdtemp(prefix="sdk-adapter-"))
        shutil.copy(folder / "adapter_config.json", staged)
        (staged / "adapter_model.bin").symlink_to((folder / OLDER_WEIGHT_FILE).resolve())
        folder = staged
    try:
        with (adalora_pattern_unchecked(folder), gptqmodel_only_for_gptq(model),
              warnings.catch_warnings()):
            warnings.filterwarnings("ignore", message="Found missing adapter keys")
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
        check_adapter_fits(model, folder)
        return model
    except (RuntimeError, ValueError, KeyError) as error:
        raise SdkError(f"--adapter '{adapter}' does not fit this base model ({error}). Use "
                       "the model type the adapter was trained on.") from None
    finally:
        if staged is not None:  # the weights are loaded by now
            shutil.rmtree(staged, ignore_errors=True)


def modules_to_save(model: Any, args: Any) -> dict[str, Any]:
    """--lora-modules-to-save as LoraConfig settings; a tied output layer shares the trained
    copy of the embeddings, as it shared the weights."""
    if not args.lora_modules_to_save:
        return {}
    tied = getattr(model.config.get_text_config(), "tie_word_embeddings", False)
    return {"modules_to_save": list(args.lora_modules_to_save), "ensure_weight_tying": tied}


# --init-lora-weights that start the adapters from the base weights and take them out of it
MUTATING_INITS = ("pissa", "olora")


def init_setting(args: Any) -> dict[str, Any]:
    """--init-lora-weights (and --pissa-niter) as LoraConfig's ``init_lora_weights``."""
    if args.init_lora_weights == "default":
        return {}
    if args.init_lora_weights == "pissa" and args.pissa_niter:
        return {"init_lora_weights": f"pissa_niter_{args.pissa_niter}"}
    return {"init_lora_weights": args.init_lora_weights}


def lora_dropout(args: Any) -> float:
    """--lora-dropout, by default 0: peft's dropout keeps a dropped copy of each adapter's
    input for the backward (qwen2.5-7b, 4096 tokens: 7 GiB more, 4% slower), and adapters
    that start with part of the base weights (PiSSA, OLoRA) would change the model before
    any step with it."""
    return 0.0 if args.lora_dropout is None else args.lora_dropout


def check_pissa_niter(args: Any) -> None:
    if args.pissa_niter and args.init_lora_weights != "pissa":
        raise SdkError(f"--pissa-niter sets PiSSA's fast SVD; this run starts its adapters "
                       f"with --init-lora-weights {args.init_lora_weights}. Give "
                       "--init-lora-weights pissa or leave --pissa-niter out.")


def check_plain_init(args: Any) -> None:
    """Tuners whose adapters peft cannot start from the base weights (or convert back)."""
    if args.init_lora_weights in MUTATING_INITS:
        raise SdkError(f"--init-lora-weights {args.init_lora_weights} works with --sft-type "
                       f"lora or rslora, not {args.sft_type}.")
    check_pissa_niter(args)


def check_arguments(args: Any) -> None:
    """lora and rslora: pissa and olora need the base weights as they are, and their
    conversion to a plain adapter keeps only the LoRA matrices."""
    check_pissa_niter(args)
    if args.init_lora_weights not in MUTATING_INITS:
        return
    flag = f"--init-lora-weights {args.init_lora_weights}"
    if args.adapter:
        raise SdkError(f"{flag} starts new adapters; --adapter continues a saved one, which "
                       "keeps its own weights. Leave one of them out.")
    if args.quantization_bit:
        raise SdkError(f"{flag} takes the adapters' start out of the base weights, which a base "
                       f"quantized to {args.quantization_bit} bits cannot give back exactly. "
                       "Drop --quantization-bit (or use --init-lora-weights default).")
    if args.deepspeed:
        raise SdkError(f"--deepspeed: {flag} converts each checkpoint from the whole adapter, "
                       "which ZeRO shards. Leave one of them out.")
    if args.lora_modules_to_save:
        raise SdkError(f"{flag}: peft's conversion of the trained adapters to plain LoRA keeps "
                       "only the LoRA matrices, so --lora-modules-to-save would not be saved. "
                       "Leave one of them out.")


def with_lora(model: Any, args: Any, spec: ModelSpec, **variant: bool) -> Any:
    from peft import LoraConfig

    if args.adapter:  # its own config (rank, targets, DoRA...) decides
        return continue_adapter(ready_for_adapters(model, args), args.adapter)
    modules, parameters = parameter_targets(model, target_modules(args.lora_target_modules,
                                                                  spec))
    dropout = lora_dropout(args)
    if parameters and dropout:
        raise SdkError(f"--lora-target-modules {' '.join(parameters)} name weights, which "
                       "peft's LoRA takes without dropout: give --lora-dropout 0.")
    config = LoraConfig(
        task_type="CAUSAL_LM",
        r=args.lora_rank,
        lora_alpha=args.lora_alpha,
        lora_dropout=dropout,
        target_modules=modules,
        **({"target_parameters": parameters} if parameters else {}),
        **modules_to_save(model, args),
        **init_setting(args),
        **variant,
    )
    return with_adapters(ready_for_adapters(model, args), config)


def prepare(model: Any, args: Any, spec: ModelSpec) -> Any:
    return with_lora(model, args, spec)


def prepare_dora(model: Any, args: Any, spec: ModelSpec) -> Any:
    return with_lora(model, args, spec, use_dora=True)


def prepare_rslora(model: Any, args: Any, spec: ModelSpec) -> Any:
    return with_lora(model, args, spec, use_rslora=True)


@contextmanager
def adalora_pattern_unchecked(folder: Path) -> Iterator[None]:
    """peft warns, loading an AdaLoRA adapter, that none of its rank pattern's keys names a
    module: AdaLoRA keys it by parameter name and applies it itself, correctly."""
    with warnings.catch_warnings():
        config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
        if config.get("peft_type") == "ADALORA":
            warnings.filterwarnings("ignore", message="The following rank_pattern keys did not "
                                    "match any targeted module", category=RuntimeWarning)
        yield


# torch's load_state_dict error, for a weight of the adapter's file that does not fit its layer
SIZE_MISMATCH = re.compile(r"size mismatch for (\S+): copying a param with shape "
                           r"torch\.Size\((\[.*?\])\) from checkpoint, the shape in current "
                           r"model is torch\.Size\((\[.*?\])\)")


def load(checkpoint_dir: Path, load_base_model: Callable[[], Any], dtype: Any) -> Any:
    from peft import PeftModel
    from peft.tuners.tuners_utils import NoMatchingPeftModuleError

    base = load_base_model()
    with (adalora_pattern_unchecked(checkpoint_dir), gptqmodel_only_for_gptq(base),
          warnings.catch_warnings()):
        # check_adapter_fits names the missing weights, in an error rather than a warning
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        try:
            model = PeftModel.from_pretrained(base, str(checkpoint_dir))
        except RuntimeError as error:
            found = SIZE_MISMATCH.search(str(error))
            if found is None:  # not the adapter's doing (out of memory, ...)
                raise
            raise damaged_checkpoint(checkpoint_dir / ADAPTER_WEIGHTS, "the adapter of another "
                                     f"model, or of other settings: "
                                     f"{found[1].replace('.default.', '.')} is {found[2]}, this "
                                     f"base model needs {found[3]}") from None
        except NoMatchingPeftModuleError as error:
            raise foreign_targets(checkpoint_dir, error) from None
    check_adapter_fits(model, checkpoint_dir)
    return generates_with_virtual_tokens(model)


def check_adapter_fits_saved_base(checkpoint: Path) -> None:
    """:func:`check_adapter_fits` without loading the base model: against an empty skeleton
    (the meta device holds no weights) built from the checkpoint's base_config.json.
    Checkpoints saved before that file existed, and AdaLoRA's (whose layers cannot be built
    on the meta device), are left to the commands that load the model."""
    if not all((checkpoint / name).is_file()
               for name in (BASE_CONFIG, ADAPTER_CONFIG, ADAPTER_WEIGHTS)):
        return
    if read_json(checkpoint / ADAPTER_CONFIG).get("peft_type") == "ADALORA":
        return
    import torch
    from peft import PeftConfig, PeftModel
    from peft.tuners.tuners_utils import NoMatchingPeftModuleError
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = read_json(checkpoint / BASE_CONFIG)
    settings.pop("quantization_config", None)  # the skeleton's layers need no quantizer
    config = AutoConfig.for_model(**settings)
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(config)
    with torch.device("meta"), gptqmodel_only_for_gptq(base):
        try:
            model = PeftModel(base, PeftConfig.from_pretrained(str(checkpoint)))
        except NoMatchingPeftModuleError as error:
            raise foreign_targets(checkpoint, error) from None
    check_adapter_fits(model, checkpoint)


def foreign_targets(checkpoint: Path, error: Exception) -> SdkError:
    """peft's refusal of an adapter config whose target modules the base model lacks."""
    return damaged_checkpoint(checkpoint / ADAPTER_CONFIG, f"the adapter of another model: "
                              f"{error}")
