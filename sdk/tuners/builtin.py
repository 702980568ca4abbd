"""The built-in tuners, registered through the same hook as third-party ones."""

from sdk.hookspecs import hookimpl
from sdk.specs import Tuner


@hookimpl
def register_tuners(register):
    register(Tuner(
        name="lora",
        prepare="sdk.tuners.lora:prepare",
        load="sdk.tuners.lora:load",
        description="LoRA adapters (peft): --lora-rank, --lora-alpha, --lora-dropout, "
                    "--lora-target-modules; QLoRA with --quantization-bit 4|8",
        trains_quantized_base=True,
    ))
    register(Tuner(
        name="full",
        prepare="sdk.tuners.full:prepare",
        load="sdk.tuners.full:load",
        description="Full fine-tuning: every weight is trained and saved",
        default_learning_rate=2e-5,
    ))
