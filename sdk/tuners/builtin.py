"""The built-in tuners, registered through the same hook as third-party ones."""

from sdk.hookspecs import hookimpl
from sdk.specs import Tuner


@hookimpl
def register_tuners(register):
    register(Tuner(
        name="lora",
        prepare="sdk.tuners.lora:prepare",
        load="sdk.tuners.lora:load",
        trains_adapters=True,
        description="LoRA adapters (peft): --lora-rank, --lora-alpha, --lora-dropout, "
                    "--lora-target-modules; QLoRA with --quantization-bit 4|8",
        trains_quantized_base=True,
    ))
    register(Tuner(
        name="dora",
        prepare="sdk.tuners.lora:prepare_dora",
        load="sdk.tuners.lora:load",
        trains_adapters=True,
        description="DoRA: LoRA with a learned magnitude per output (--lora-* flags)",
        trains_quantized_base=True,
    ))
    register(Tuner(
        name="rslora",
        prepare="sdk.tuners.lora:prepare_rslora",
        load="sdk.tuners.lora:load",
        trains_adapters=True,
        description="Rank-stabilised LoRA: scaled by alpha/sqrt(rank) (--lora-* flags)",
        trains_quantized_base=True,
    ))
    register(Tuner(
        name="ia3",
        prepare="sdk.tuners.ia3:prepare",
        load="sdk.tuners.lora:load",
        trains_adapters=True,
        description="IA³: learned scaling vectors on attention keys/values and feed-forward",
        default_learning_rate=3e-3,
    ))
    register(Tuner(
        name="freeze",
        prepare="sdk.tuners.freeze:prepare",
        load="sdk.tuners.full:load",
        description="Train only the last --freeze-trainable-layers layers (and "
                    "--freeze-trainable-modules); saves the whole model",
        default_learning_rate=2e-5,
    ))
    register(Tuner(
        name="full",
        prepare="sdk.tuners.full:prepare",
        load="sdk.tuners.full:load",
        description="Full fine-tuning: every weight is trained and saved",
        default_learning_rate=2e-5,
    ))
