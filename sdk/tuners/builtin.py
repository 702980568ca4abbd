"""The built-in tuners, registered through the same hook as third-party ones."""

from sdk.hookspecs import hookimpl
from sdk.specs import Tuner


def adapter_tuner(name: str, prepare: str, description: str, **settings) -> Tuner:
    """A peft adapter tuner: its checkpoints reload through peft, --adapter continues one."""
    return Tuner(name=name, prepare=prepare, load="sdk.tuners.lora:load", trains_adapters=True,
                 description=description, **settings)


@hookimpl
def register_tuners(register):
    register(adapter_tuner(
        "lora", "sdk.tuners.lora:prepare",
        "LoRA adapters (peft): --lora-rank, --lora-alpha, --lora-dropout, "
        "--lora-target-modules; QLoRA with --quantization-bit 4|8",
        trains_quantized_base=True))
    register(adapter_tuner(
        "dora", "sdk.tuners.lora:prepare_dora",
        "DoRA: LoRA with a learned magnitude per output (--lora-* flags)",
        trains_quantized_base=True))
    register(adapter_tuner(
        "rslora", "sdk.tuners.lora:prepare_rslora",
        "Rank-stabilised LoRA: scaled by alpha/sqrt(rank) (--lora-* flags)",
        trains_quantized_base=True))
    register(adapter_tuner(
        "ia3", "sdk.tuners.ia3:prepare",
        "IA³: learned scaling vectors on attention keys/values and feed-forward",
        default_learning_rate=3e-3))
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
