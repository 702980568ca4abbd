"""Test-only reference: Qwen (v1)'s official code (shared/data/remote_code/qwen-7b-chat), run
under transformers 5 with the fewest patches that let it run, and a tiny checkpoint in its
official layout. The SDK's native conversion is compared with this."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REMOTE_CODE, official_module, randomize, save_official_checkpoint

OFFICIAL = REMOTE_CODE / "qwen-7b-chat"
# Tiny sizes under the official config keys; the real vocabulary. seq_length 64 (the trained
# window) lets a test reach the window's end with a short prompt.
TINY = {"hidden_size": 64, "num_attention_heads": 4, "kv_channels": 16, "num_hidden_layers": 2,
        "intermediate_size": 256, "seq_length": 64}
# randomize's matrices (std 0.02) give near-uniform attention and an MLP near its linear
# part, where swapped q/k, a mis-ordered rotary or w1/w2 swapped change the logits by little;
# ten times larger matrices make each of them show.
SCALE = 10


def modeling():
    """modeling_qwen, patched for transformers 5.

    Imported through ``official_module``, not transformers' dynamic-module loader, so the
    ``transformers_stream_generator`` import inside ``chat_stream`` (which transformers 5's
    ``check_imports`` turns into a load failure) is never made: no stub module is needed.
    """
    module = official_module(OFFICIAL, "modeling_qwen")
    if not hasattr(module.QWenPreTrainedModel, "get_head_mask"):
        # transformers 5 removed PreTrainedModel.get_head_mask, which QWenModel.forward calls;
        # without a head mask transformers 4 returned one None per layer.
        module.QWenPreTrainedModel.get_head_mask = (
            lambda self, head_mask, num_hidden_layers, *args, **kwargs:
            [None] * num_hidden_layers)
    return module


def official_config(settings: dict):
    """QWenConfig from config.json's settings, in fp32 without flash attention (the official
    code would pick bf16 and flash-attn on a GPU), so that logits compare exactly."""
    config = official_module(OFFICIAL, "configuration_qwen").QWenConfig(**settings)
    config.bf16 = config.fp16 = False
    config.fp32, config.use_flash_attn = True, False
    return config


def model_class():
    """QWenLMHeadModel with generate(): transformers 5's PreTrainedModel no longer inherits
    GenerationMixin (its auto classes mix it into remote-code classes; here it is done by
    hand, as they do)."""
    from transformers import GenerationMixin

    base = modeling().QWenLMHeadModel
    return type("QWenLMHeadModel", (base, GenerationMixin), {})


def tiny_official_checkpoint(folder: Path, **settings) -> Path:
    """A tiny random-weight Qwen (v1) checkpoint in the official layout: the official
    config.json with TINY sizes (and ``settings``), QWenLMHeadModel's parameter names, the
    official code and the real qwen.tiktoken, safetensors weights."""
    import torch

    config = {**json.loads((OFFICIAL / "config.json").read_text(encoding="utf-8")), **TINY,
              **settings}
    model = model_class()(official_config(config))
    randomize(model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if parameter.dim() == 2:
                parameter.mul_(SCALE)
            elif ".ln_" in name:  # Qwen's RMSNorms (ln_1, ln_2, ln_f): near 1, as trained ones
                parameter.copy_(1 + 0.1 * torch.randn(parameter.shape, generator=generator))
    return save_official_checkpoint(OFFICIAL, folder, config, model)


def official_model(folder: Path):
    """The official model of ``folder``, in eval mode.

    Built from its config and given the weights with ``load_state_dict`` (strict: every
    parameter from the file) rather than ``from_pretrained``: transformers 5's from_pretrained
    re-initialises ``c_proj.weight`` after loading (QWenPreTrainedModel._init_weights matches it
    by name, and the weights are not marked as loaded from the file) and leaves buffers that
    are not in the checkpoint (the rotary inv_freq, logn_tensor) uninitialised; built here they
    are computed as in transformers 4.
    """
    from safetensors.torch import load_file
    from transformers import GenerationConfig

    settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = model_class()(official_config(settings))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model.eval()


def official_tokenizer(folder: Path):
    """QWenTokenizer (tokenization_qwen.py, tiktoken) on the folder's qwen.tiktoken; it loads
    and encodes under transformers 5 unpatched."""
    return official_module(OFFICIAL, "tokenization_qwen").QWenTokenizer(
        str(folder / "qwen.tiktoken"))


def make_context(tokenizer, query: str, history: list[tuple[str, str]], system: str):
    """qwen_generation_utils.make_context in the chat format of the chat models (chatml)."""
    utils = official_module(OFFICIAL, "qwen_generation_utils")
    return utils.make_context(tokenizer, query, history=history, system=system,
                              chat_format="chatml")


def finetune_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The input ids of QwenLM/Qwen's finetune.py (``preprocess``) for a conversation whose
    first message may be the system prompt (finetune.py takes it as ``system_message``): each
    turn is ``<|im_start|>{role}\\n{content}<|im_end|>\\n``, every part tokenized alone.
    finetune.py is not in the model repository and imports deepspeed, so its steps are
    written out here as it writes them."""
    system = "You are a helpful assistant."
    if messages[0]["role"] == "system":
        system, messages = messages[0]["content"], messages[1:]
    im_start, im_end = tokenizer.im_start_id, tokenizer.im_end_id
    nl_tokens = tokenizer("\n").input_ids
    input_id = ([im_start] + tokenizer("system").input_ids + nl_tokens
                + tokenizer(system).input_ids + [im_end] + nl_tokens)
    for message in messages:
        input_id += (tokenizer(f"<|im_start|>{message['role']}").input_ids + nl_tokens
                     + tokenizer(message["content"]).input_ids + [im_end] + nl_tokens)
    return input_id


# --- GPTQ (Qwen-7B-Chat-Int4/Int8) ---------------------------------------------------------------

# Qwen's GPTQ quantization_config (QwenLM/Qwen's run_gptq.py, auto-gptq), as Qwen-VL-Chat-Int4's
# config.json holds it; the bits are set per checkpoint.
GPTQ_CONFIG = REMOTE_CODE / "qwen-7b-chat" / "qwen-vl-chat-int4-quantization_config.json"
# hidden_size and the MLP's inputs must be whole groups of 128 input rows (group_size 128):
# c_attn/c_proj/w1/w2 read 128 rows (one group), mlp.c_proj 256 (two).
TINY_GPTQ = {"hidden_size": 128, "num_attention_heads": 4, "kv_channels": 32,
             "num_hidden_layers": 2, "intermediate_size": 512, "seq_length": 64}
GPTQ_LAYERS = ("attn.c_attn", "attn.c_proj", "mlp.w1", "mlp.w2", "mlp.c_proj")


def pack(codes, bits: int, dim: int):
    """auto-gptq's int32 packing: 32 / bits values along ``dim``, the first in the low bits."""
    import torch

    per_word = 32 // bits
    codes = codes.movedim(dim, 0).to(torch.int64)
    words = codes.reshape(codes.shape[0] // per_word, per_word, *codes.shape[1:])
    shifts = (torch.arange(per_word) * bits).view(1, per_word, *([1] * (codes.dim() - 1)))
    packed = (words << shifts).sum(dim=1)
    packed = torch.where(packed >= 2**31, packed - 2**32, packed)  # the int32 bit pattern
    return packed.to(torch.int32).movedim(0, dim).contiguous()


def tiny_gptq_checkpoint(folder: Path, bits: int) -> tuple[Path, dict]:
    """A tiny Qwen (v1) GPTQ checkpoint in the official -Int4/-Int8 layout: random codes
    packed as auto-gptq packs them ("gptq" v1: zero point minus one stored; sym: the zero
    point 2^(bits-1)), fp16 scales, c_attn's bias, fp16 wte/norms/lm_head. Also the state dict
    of the official model holding the dequantized weights, in fp32 (computed from the codes,
    not with the SDK's dequantize): the reference."""
    import torch

    settings = json.loads(GPTQ_CONFIG.read_text(encoding="utf-8"))["quantization_config"]
    config = {**json.loads((OFFICIAL / "config.json").read_text(encoding="utf-8")), **TINY_GPTQ,
              "quantization_config": {**settings, "bits": bits}}
    model = model_class()(official_config(config))
    randomize(model)
    generator = torch.Generator().manual_seed(bits)
    reference, stored = {}, {}
    group_size, zero = settings["group_size"], 2 ** (bits - 1)
    for name, tensor in model.state_dict().items():
        module, _, kind = name.rpartition(".")
        if not module.endswith(GPTQ_LAYERS) or kind != "weight":  # stored in fp16
            half = (tensor * SCALE).to(torch.float16)  # wte, lm_head: as the fp16 checkpoint's
            if ".ln_" in name:
                half = (1 + 0.1 * torch.randn(tensor.shape, generator=generator)).half()
            stored[name], reference[name] = half, half.float()
            continue
        out_features, in_features = tensor.shape
        codes = torch.randint(0, 2**bits, (in_features, out_features), generator=generator)
        groups = in_features // group_size
        # weights of about 0.2 (as official_qwen's SCALE gives the fp16 checkpoint)
        scales = (0.05 + 0.1 * torch.rand(groups, out_features, generator=generator))
        scales = (scales * 16 / 2**bits).half()
        g_idx = torch.arange(in_features, dtype=torch.int32) // group_size
        stored[f"{module}.qweight"] = pack(codes, bits, 0)
        stored[f"{module}.qzeros"] = pack(torch.full((groups, out_features), zero - 1), bits, 1)
        stored[f"{module}.scales"] = scales
        stored[f"{module}.g_idx"] = g_idx
        reference[name] = (scales.float()[g_idx.long()] * (codes - zero).float()).t()
    holder = type("Weights", (), {"state_dict": lambda self: stored})()
    return save_official_checkpoint(OFFICIAL, folder, config, holder), reference


def official_gptq_reference(folder: Path, reference: dict):
    """The official model of a tiny GPTQ checkpoint, holding its dequantized weights in fp32."""
    from transformers import GenerationConfig

    settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = model_class()(official_config(settings))
    model.load_state_dict(reference, strict=True)
    model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model.eval()
