"""The built-in tuners, registered through the same hook as third-party ones."""

from sdk.hookspecs import hookimpl
from sdk.specs import Tuner
from sdk.tuners.options import (
    AdaloraOptions,
    FreezeOptions,
    LoraOptions,
    PtuningOptions,
    VirtualTokenOptions,
)


def adapter_tuner(name: str, prepare: str, description: str, **settings) -> Tuner:
    """A peft adapter tuner: its checkpoints reload through peft, --adapter continues one."""
    return Tuner(name=name, prepare=prepare, load="sdk.tuners.lora:load", trains_adapters=True,
                 description=description, **settings)


NO_LORA = "sdk.tuners:check_not_lora"  # refuses --loraplus-lr-ratio
# lora and rslora: --init-lora-weights pissa|olora, checkpoints converted to plain LoRA
STARTS_FROM_BASE = {"check_arguments": "sdk.tuners.lora:check_arguments",
                    "callbacks": "sdk.tuners.mutated_init:callbacks"}


@hookimpl
def register_tuners(register):
    register(adapter_tuner(
        "lora", "sdk.tuners.lora:prepare",
        "LoRA adapters (peft): --lora-rank, --lora-alpha, --lora-dropout, "
        "--lora-target-modules, --lora-modules-to-save, --init-lora-weights (PiSSA, OLoRA); "
        "QLoRA with --quantization-bit 4|8",
        trains_quantized_base=True, options=LoraOptions, **STARTS_FROM_BASE))
    register(adapter_tuner(
        "dora", "sdk.tuners.lora:prepare_dora",
        "DoRA: LoRA with a learned magnitude per output (--lora-* flags)",
        trains_quantized_base=True, options=LoraOptions,
        check_arguments="sdk.tuners.lora:check_plain_init"))
    register(adapter_tuner(
        "rslora", "sdk.tuners.lora:prepare_rslora",
        "Rank-stabilised LoRA: scaled by alpha/sqrt(rank) (--lora-* flags)",
        trains_quantized_base=True, options=LoraOptions, **STARTS_FROM_BASE))
    register(adapter_tuner(
        "qlora", "sdk.tuners.lora:prepare",
        "LoRA on a 4-bit base (nf4, double quantization; --quantization-bit 8 for 8-bit); "
        "needs bitsandbytes",
        trains_quantized_base=True, default_quantization_bit=4, requires=("bitsandbytes",),
        options=LoraOptions, check_arguments="sdk.tuners.lora:check_plain_init"))
    register(adapter_tuner(
        "adalora", "sdk.tuners.adalora:prepare",
        "AdaLoRA: LoRA ranks pruned while training from --adalora-init-rank to an average of "
        "--adalora-target-rank",
        trains_quantized_base=True, callbacks="sdk.tuners.adalora:callbacks",
        options=AdaloraOptions))
    # peft cannot train saved virtual tokens further: --adapter refuses their checkpoints
    register(adapter_tuner(
        "prefix", "sdk.tuners.prompt:prepare_prefix",
        "Prefix tuning / P-tuning v2: --num-virtual-tokens learned keys and values in every "
        "layer", default_learning_rate=1e-2, options=VirtualTokenOptions,
        check_arguments=NO_LORA))
    register(adapter_tuner(
        "ptuning", "sdk.tuners.prompt:prepare_ptuning",
        "P-tuning: --num-virtual-tokens input embeddings made by an MLP "
        "(--prompt-encoder-hidden-size)", default_learning_rate=1e-2,
        options=PtuningOptions, check_arguments=NO_LORA))
    register(adapter_tuner(
        "prompt", "sdk.tuners.prompt:prepare_prompt",
        "Prompt tuning: --num-virtual-tokens input embeddings learned directly",
        default_learning_rate=1e-2, options=VirtualTokenOptions, check_arguments=NO_LORA))
    register(adapter_tuner(
        "ia3", "sdk.tuners.ia3:prepare",
        "IA³: learned scaling vectors on attention keys/values and feed-forward",
        default_learning_rate=3e-3, check_arguments=NO_LORA))
    register(Tuner(
        name="freeze",
        prepare="sdk.tuners.freeze:prepare",
        load="sdk.tuners.full:load",
        description="Train only the last --freeze-trainable-layers layers (and "
                    "--freeze-trainable-modules); saves the whole model",
        default_learning_rate=2e-5,
        check_arguments=NO_LORA,
        options=FreezeOptions,
    ))
    register(Tuner(
        name="full",
        prepare="sdk.tuners.full:prepare",
        load="sdk.tuners.full:load",
        description="Full fine-tuning: every weight is trained and saved",
        default_learning_rate=2e-5,
        check_arguments=NO_LORA,
    ))
