"""``--infer-backend vllm``: vLLM generates, on a CUDA GPU, for `sdk infer` (a query, a chat,
batch prediction) and `sdk deploy` (its AsyncLLMEngine: concurrent requests join the running
batch). The prompts are sdk's template's, given to vLLM as token ids; the decoding flags
become vLLM's SamplingParams; a checkpoint's LoRA adapter is served on its base model through
vLLM's LoRA support (a LoRARequest), and an export or a whole checkpoint is vLLM's model.

Written from vLLM's documented API (LLM.generate, AsyncLLMEngine.generate, SamplingParams,
LoRARequest, TokensPrompt); without vLLM or a CUDA device it is refused before anything loads
(`check_vllm`)."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Sequence
from typing import Any

from sdk.config import GenerationArguments
from sdk.errors import SdkError
from sdk.registry import Registry
from sdk.templates.engine import Template

Messages = list[dict[str, str]]
# vLLM's names of --dtype's values
DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# The LoRA ranks vLLM sizes its adapter slots for (--max-lora-rank takes one of them)
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)
ADAPTER_NAME = "sdk-adapter"


def check_vllm(args: GenerationArguments) -> None:
    """vLLM installed, a CUDA device, and flags it can honour; else a clear refusal."""
    if importlib.util.find_spec("vllm") is None:
        raise SdkError("--infer-backend vllm needs vLLM, which is not installed: pip install "
                       "vllm (on a machine with a CUDA GPU), or leave out --infer-backend to "
                       "generate with transformers.")
    import torch

    if not torch.cuda.is_available():
        raise SdkError("--infer-backend vllm runs on a CUDA GPU and this machine has none "
                       "(torch.cuda.is_available() is false): leave out --infer-backend to "
                       "generate with transformers.")
    unsupported = [flag for flag, given in (
        ("--num-beams", args.num_beams > 1), ("--no-repeat-ngram-size", args.no_repeat_ngram_size),
        ("--merge-lora", args.merge_lora), ("--quantization-bit", args.quantization_bit),
        ("--rope-scaling", args.rope_scaling), ("--rope-factor", args.rope_factor)) if given]
    if unsupported:
        raise SdkError(f"{', '.join(unsupported)}: not with --infer-backend vllm (vLLM applies "
                       "the adapter itself, and loads the model as its folder says); leave "
                       f"{'it' if len(unsupported) == 1 else 'them'} out, serve an export of "
                       "`sdk export`, or use --infer-backend transformers.")


@dataclasses.dataclass(frozen=True)
class VllmSource:
    """What vLLM loads: the model folder, and a LoRA adapter folder on it (with its rank)."""

    model: str
    tokenizer: str
    adapter: str | None = None
    lora_rank: int = 0

    def engine_arguments(self, args: GenerationArguments) -> dict[str, Any]:
        """vLLM's engine arguments (``LLM(...)``, ``AsyncEngineArgs(...)``)."""
        arguments: dict[str, Any] = dict(
            model=self.model, tokenizer=self.tokenizer, dtype=DTYPES[args.dtype],
            seed=args.seed, trust_remote_code=args.trust_remote_code)
        if self.adapter is not None:
            arguments.update(enable_lora=True, max_loras=1, max_lora_rank=next(
                rank for rank in LORA_RANKS if rank >= self.lora_rank))
        return arguments

    def lora_request(self) -> Any:
        if self.adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        return LoRARequest(ADAPTER_NAME, 1, self.adapter)


def vllm_source(args: GenerationArguments,
                registry: Registry) -> tuple[VllmSource, Template, Any]:
    """What --ckpt-dir or --model-type name, as vLLM loads it, and sdk's template for it with
    its tokenizer."""
    from transformers import AutoTokenizer

    from sdk.infer.load import (
        bound_template,
        checkpoint_or_export,
        nothing_to_load,
        template_choice,
    )
    from sdk.models.loader import load_options, load_tokenizer, model_folder
    from sdk.runs.checkpoint_files import ADAPTER_CONFIG
    from sdk.runs.run_dir import ARGS_FILE, read_saved_arguments

    if args.ckpt_dir:
        checkpoint = checkpoint_or_export(args.ckpt_dir)
        saved = read_saved_arguments(checkpoint / ARGS_FILE)
        choice = template_choice(args, registry, saved)
        tokenizer = AutoTokenizer.from_pretrained(str(checkpoint),
                                                  trust_remote_code=args.trust_remote_code)
        if not (checkpoint / ADAPTER_CONFIG).is_file():  # an export, or a whole model
            return (VllmSource(str(checkpoint), str(checkpoint)),
                    bound_template(choice, tokenizer), tokenizer)
        spec = registry.get("models", saved["model_type"])
        rank = lora_rank(checkpoint, saved["sft_type"], spec.loader is not None)
        base_args = dataclasses.replace(
            args, model_id_or_path=args.model_id_or_path or saved.get("model_id_or_path"),
            hub=args.hub or saved.get("hub"),
            trust_remote_code=args.trust_remote_code or saved.get("trust_remote_code", False))
        base = model_folder(spec, load_options(spec, base_args, registry))
        return (VllmSource(str(base), str(checkpoint), str(checkpoint), rank),
                bound_template(choice, tokenizer), tokenizer)
    if not args.model_type:
        raise nothing_to_load(args, registry)
    spec = registry.get("models", args.model_type)
    folder = model_folder(spec, load_options(spec, args, registry))
    tokenizer = load_tokenizer(spec, args, registry)
    return (VllmSource(str(folder), str(folder)),
            bound_template(template_choice(args, registry), tokenizer), tokenizer)


def lora_rank(checkpoint: Any, sft_type: str, converted: bool) -> int:
    """The rank of the checkpoint's adapter, refused where vLLM's LoRA support cannot serve
    it: another kind of adapter, or one on a family sdk converts as it loads (its modules
    are named as converted, and vLLM loads the model as published)."""
    from peft import PeftConfig

    config = PeftConfig.from_pretrained(str(checkpoint))
    if config.peft_type != "LORA" or getattr(config, "use_dora", False):
        raise SdkError(f"{checkpoint} holds a {sft_type} adapter, and vLLM serves LoRA "
                       "adapters only: merge it (`sdk export --merge-lora`) and serve the "
                       "export, or use --infer-backend transformers.")
    if converted:
        raise SdkError(f"{checkpoint} is an adapter on a model sdk converts as it loads, "
                       "which vLLM loads as published: merge it (`sdk export --merge-lora`) "
                       "and serve the export with --infer-backend vllm.")
    if config.r > LORA_RANKS[-1]:
        raise SdkError(f"{checkpoint}: LoRA rank {config.r} is above vLLM's largest "
                       f"({LORA_RANKS[-1]}): merge it (`sdk export --merge-lora`) and serve "
                       "the export.")
    return config.r


def sampling_params(args: GenerationArguments, stop_ids: Sequence[int],
                    stop_strings: Sequence[str], max_tokens: int,
                    seed: int | None = None) -> Any:
    """The decoding flags as vLLM's SamplingParams (greedy: temperature 0)."""
    from vllm import SamplingParams

    sampled = args.do_sample
    return SamplingParams(
        temperature=args.temperature if sampled else 0.0, top_p=args.top_p if sampled else 1.0,
        top_k=(args.top_k or -1) if sampled else -1, repetition_penalty=args.repetition_penalty,
        max_tokens=max_tokens, stop=list(stop_strings) or None, stop_token_ids=list(stop_ids),
        seed=seed if seed is not None else (args.seed if sampled else None),
        skip_special_tokens=True)


class VllmEngine:
    """vLLM's offline engine (``LLM``) over a source, prompted with sdk's template: the
    replies to a batch of conversations, as `sdk infer` and batch prediction want them."""

    def __init__(self, source: VllmSource, template: Template, tokenizer: Any,
                 args: GenerationArguments):
        from vllm import LLM

        self.llm = LLM(**source.engine_arguments(args))
        self.lora = source.lora_request()
        self.template, self.tokenizer = template, tokenizer

    @classmethod
    def load(cls, args: GenerationArguments, registry: Registry) -> VllmEngine:
        check_vllm(args)
        return cls(*vllm_source(args, registry), args)

    def replies(self, template: Template, prompts: Sequence[Messages],
                args: GenerationArguments) -> list[str]:
        from vllm.inputs import TokensPrompt

        from sdk.infer.stops import finish_reply, stop_tokens

        stop_ids, stop_strings = stop_tokens(template, self.tokenizer)
        encoded = [TokensPrompt(prompt_token_ids=template.tokenize_prompt(
            self.tokenizer, prompt)["input_ids"][0].tolist()) for prompt in prompts]
        try:
            outputs = self.llm.generate(encoded, sampling_params(
                args, stop_ids, stop_strings, args.max_new_tokens), lora_request=self.lora)
        except ValueError as error:  # vLLM's refusal of a prompt past the model's window
            raise SdkError(f"vLLM refused a prompt: {error}") from None
        return [finish_reply(output.outputs[0].text, stop_strings) for output in outputs]
