"""The built-in tuners' own `sdk sft` options (``Tuner.options``), one small dataclass per group
of tuners that reads them. Imports nothing heavy: `sdk sft --help` builds its flags from these."""

from dataclasses import dataclass

from sdk.config import arg


@dataclass
class AdapterOptions:
    """What every LoRA-family tuner reads (lora, qlora, dora, rslora, adalora)."""

    lora_alpha: int = arg(32, "LoRA alpha.", at_least=1)
    lora_dropout: float | None = arg(
        None, "LoRA dropout (default: 0: a dropout keeps a dropped copy of each adapter's "
        "input for the backward, 7 GiB more and 4% slower on qwen2.5-7b at 4096 tokens; "
        "ms-swift's default is 0.05). Not with --lora-target-modules naming weights, which "
        "peft's LoRA takes without dropout.",
        at_least=0, below=1)
    lora_target_modules: list[str] = arg(
        [], "Modules that get LoRA: names, or ALL for every linear layer; a name that is no "
        "module's but a weight's (a MoE's fused experts, e.g. experts.gate_up_proj "
        "experts.down_proj in Qwen3-MoE) gets it through peft's target_parameters.",
        kept_on_resume=True)
    lora_modules_to_save: list[str] = arg(
        [], "LoRA family: modules trained in full and saved with the adapter (e.g. "
        "embed_tokens lm_head); tied embeddings stay tied.", kept_on_resume=True)


@dataclass
class LoraOptions(AdapterOptions):
    """lora, qlora, dora, rslora."""

    lora_rank: int = arg(8, "LoRA rank.", at_least=1, kept_on_resume=True)
    init_lora_weights: str = arg(
        "default", "How new LoRA adapters start. default: B zero, A random (peft's); gaussian: A "
        "Gaussian; pissa: the base weights' principal singular parts, taken out of the base "
        "(PiSSA); olora: an orthonormal QR basis of the base weights (OLoRA). pissa and olora "
        "change the base, so each checkpoint saves a plain LoRA adapter of twice the rank "
        "that applies to the unchanged base. lora and rslora; pissa and olora not on a "
        "quantized base.", ("default", "gaussian", "pissa", "olora"), kept_on_resume=True)
    pissa_niter: int = arg(
        0, "--init-lora-weights pissa: a fast randomized SVD with N subspace iterations "
        "instead of the exact one (16 is usual for 7B models; 0: exact).", at_least=0,
        kept_on_resume=True)


@dataclass
class AdaloraOptions(AdapterOptions):
    adalora_target_rank: int = arg(8, "--sft-type adalora: average rank left after pruning.",
                                   at_least=1)
    adalora_init_rank: int = arg(12, "--sft-type adalora: rank of each adapter before pruning.",
                                 at_least=1, kept_on_resume=True)
    adalora_tinit: int | None = arg(None, "--sft-type adalora: steps before pruning starts "
                                    "(default: a tenth of the steps).", at_least=0)
    adalora_tfinal: int | None = arg(None, "--sft-type adalora: last steps, trained with the "
                                     "final ranks (default: a fifth of the steps).", at_least=0)
    adalora_delta_t: int = arg(1, "--sft-type adalora: steps between two rank allocations.",
                               at_least=1)


@dataclass
class VirtualTokenOptions:
    """prefix, prompt, ptuning."""

    num_virtual_tokens: int = arg(20, "--sft-type prefix, ptuning, prompt: how many virtual "
                                  "tokens are learned.", at_least=1, kept_on_resume=True)


@dataclass
class PtuningOptions(VirtualTokenOptions):
    prompt_encoder_hidden_size: int = arg(128, "--sft-type ptuning: hidden size of the MLP that "
                                          "encodes the virtual tokens.", at_least=1)


@dataclass
class FreezeOptions:
    freeze_trainable_layers: int = arg(2, "--sft-type freeze: how many last layers train.",
                                       at_least=0, kept_on_resume=True)
    freeze_trainable_modules: list[str] = arg(
        [], "--sft-type freeze: modules that train too, by name (e.g. lm_head embed_tokens).",
        kept_on_resume=True)
