"""Qwen (v1) checkpoints as transformers' Qwen2, converted on load: no remote code runs.

Qwen v1's ``QWenLMHeadModel`` (modeling_qwen.py of Qwen/Qwen-7B-Chat) is Qwen2's architecture
under other names, within its trained window:

- attention: ``c_attn`` is q, k and v stacked along its output (``mixed.split(hidden_size)``),
  with biases, as Qwen2's q/k/v_proj; ``c_proj`` has no bias (``no_bias``), as Qwen2's o_proj;
  every head has its own key and value (no grouping); scores are scaled by 1/sqrt(head_dim)
  (``_attn`` divides by ``value.size(-1) ** 0.5``; the SDPA path uses SDPA's default scale);
- rotary: ``_rotate_half`` splits the head dimension in two halves (``(j d) -> j d``, j=2) and
  the cache is ``cat(freqs, freqs)`` with ``inv_freq = 1 / base ** (arange(0, dim, 2) / dim)``:
  the non-interleaved form of Qwen2's ``rotate_half``, base ``rotary_emb_base``;
- MLP: ``c_proj(w1(x) * silu(w2(x)))``, each of width ``intermediate_size // 2``: Qwen2's
  ``down_proj(act(gate_proj(x)) * up_proj(x))`` with w2 as gate_proj, w1 as up_proj;
- RMSNorm ``ln_1``/``ln_2``/``ln_f`` with ``layer_norm_epsilon``, untied ``lm_head``.

Beyond ``seq_length`` tokens (and only when not training) the official code changes two things
that Qwen2 has no setting for: dynamic NTK (``get_ntk_alpha``: a larger rotary base chosen from
the prompt's length) and log-n attention (queries scaled by log base seq_length of their
position). Within ``seq_length`` both are exactly off (ntk_alpha is 1 and the log-n factor 1),
so the native config's window, ``max_position_embeddings``, is ``seq_length``: the window in
which the native model equals the official one. ``sdk infer`` keeps replies within a model's
window, and ``--rope-scaling`` stretches it explicitly.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.models.native import (
    DEQUANTIZED_BASE,
    Conversion,
    Tensors,
    load_native,
    native_folder,
    native_tokenizer,
    read_json,
)

# tokenization_qwen.py: the pre-tokenizer's regular expression, and the special tokens with
# their fixed ids (SPECIAL_START_ID), after the 151,643 ranks of qwen.tiktoken.
PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"""
           r""" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205)))
SPECIAL_START_ID = 151643
ENDOFTEXT_ID, IM_END_ID = SPECIAL_START_ID, SPECIAL_START_ID + 2
VOCAB_FILE = "qwen.tiktoken"

# configuration_qwen.QWenConfig's defaults, for keys a config.json leaves out.
DEFAULTS: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 4096, "num_hidden_layers": 32,
    "num_attention_heads": 32, "attn_dropout_prob": 0.0, "layer_norm_epsilon": 1e-6,
    "initializer_range": 0.02, "bf16": False, "fp16": False, "fp32": False,
    "kv_channels": 128, "rotary_pct": 1.0, "rotary_emb_base": 10000,
    "intermediate_size": 22016, "no_bias": True, "tie_word_embeddings": False,
}
# Official keys the conversion does not need: use_flash_attn (a kernel choice; --attn-impl),
# scale_attn_weights (QWenAttention always scales), softmax_in_fp32 (only its non-SDPA path),
# use_cache_quantization / use_cache_kernel (an int8 KV cache, inference only), and
# emb_dropout_prob (0.0 in every released config; Qwen2 has no embedding dropout).
# Official sampling settings carried into the native generation_config.json.
SAMPLING = ("do_sample", "top_p", "top_k", "temperature", "repetition_penalty", "max_new_tokens")


def qwen2_config(official: dict[str, Any]) -> dict[str, Any]:
    """The Qwen2 config.json of a Qwen (v1) config.json, refusing what Qwen2 cannot hold."""
    value = {**DEFAULTS, **official}
    if "hidden_size" not in official and "n_embd" in official:
        raise SdkError("config.json uses the first Qwen release's names (n_embd, n_head...), "
                       "whose code differs from the current one; download the model's current "
                       "revision.")
    if "seq_length" not in official:  # QWenConfig has no default: the official code fails too
        raise SdkError("config.json has no seq_length (the trained window), which Qwen (v1)'s "
                       "code reads; it is not a Qwen (v1) config.")
    heads, hidden = value["num_attention_heads"], value["hidden_size"]
    if value["rotary_pct"] != 1.0:
        raise SdkError(f"rotary_pct {value['rotary_pct']} in config.json: Qwen2 rotates the whole "
                       "head (rotary_pct 1.0, as every released Qwen); this checkpoint cannot be "
                       "converted.")
    if value["kv_channels"] * heads != hidden:
        # QWenAttention splits c_attn's output by hidden_size and heads by hidden_size // heads
        raise SdkError(f"kv_channels {value['kv_channels']} x {heads} heads is not hidden_size "
                       f"{hidden} in config.json; Qwen (v1)'s attention needs them equal.")
    if not value["no_bias"]:
        raise SdkError("no_bias false in config.json: Qwen2 has no bias on o_proj and the MLP.")
    native: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": value["vocab_size"],
        "hidden_size": hidden,
        "intermediate_size": value["intermediate_size"] // 2,  # w1, w2: intermediate_size // 2
        "num_hidden_layers": value["num_hidden_layers"],
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "hidden_act": "silu",
        # the trained window: the official model equals Qwen2 up to it (module docstring)
        "max_position_embeddings": value["seq_length"],
        "initializer_range": value["initializer_range"],
        "rms_norm_eps": value["layer_norm_epsilon"],
        "rope_parameters": {"rope_type": "default", "rope_theta": float(value["rotary_emb_base"])},
        "attention_dropout": value["attn_dropout_prob"],
        "tie_word_embeddings": value["tie_word_embeddings"],
        "use_sliding_window": False,
        "use_cache": True,
        # No pad_token_id: Qwen2 would make it the embedding's padding_idx (no gradient), which
        # Qwen's wte does not have.
        "eos_token_id": IM_END_ID,
    }
    # bf16/fp16/fp32 name the stored precision; none set (Qwen's own configs) means "pick at
    # run time", as the SDK's --dtype auto does.
    for flag, dtype in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")):
        if value[flag]:
            native["dtype"] = dtype
    return native


# Official module paths (below transformer.h.N.) and their Qwen2 names (below model.layers.N.).
LAYER_MODULES = {
    "ln_1": "input_layernorm",
    "ln_2": "post_attention_layernorm",
    "attn.c_proj": "self_attn.o_proj",
    "mlp.w1": "mlp.up_proj",  # a1 = w1(x); a2 = w2(x); a1 * silu(a2)
    "mlp.w2": "mlp.gate_proj",
    "mlp.c_proj": "mlp.down_proj",
}
TOP_MODULES = {"transformer.wte": "model.embed_tokens", "transformer.ln_f": "model.norm",
               "lm_head": "lm_head"}
LAYER = re.compile(r"transformer\.h\.(\d+)\.(.+)")
# Buffers the official code recomputes (older checkpoints store some); Qwen2 recomputes its own.
BUFFERS = ("rotary_emb.inv_freq", "attn.masked_bias", "attn.logn_tensor")
# The dimension along which each tensor of c_attn holds the query, key and value projections one
# after the other (QWenAttention splits c_attn's output in three equal parts). None: a tensor
# that the three share whole. GPTQ (the -Int4/-Int8 checkpoints, auto-gptq's QuantLinear):
# qweight [in / per-word, 3 hidden] and scales [groups, 3 hidden] hold the output columns,
# qzeros [groups, 3 hidden / per-word] packs the output columns (a part is hidden / per-word
# words: gptq_config checks that it is whole), g_idx (the group of each input row) is shared.
FUSED_QKV_DIM: dict[str, int | None] = {"weight": 0, "bias": 0, "qweight": 1, "qzeros": 1,
                                        "scales": 1, "g_idx": None}


def qwen2_tensors(name: str, tensor: Any, official: dict[str, Any]) -> Tensors:
    """The Qwen2 weights of one official weight: renamed, c_attn split into q/k/v_proj,
    buffers dropped. Stored dtypes are kept."""
    if name.endswith(BUFFERS):
        return []
    module, _, kind = name.rpartition(".")
    if module in TOP_MODULES:
        return [(f"{TOP_MODULES[module]}.{kind}", tensor)]
    layer = LAYER.fullmatch(module)
    if layer is not None:
        prefix = f"model.layers.{layer.group(1)}"
        if layer.group(2) == "attn.c_attn" and kind in FUSED_QKV_DIM:
            dim = FUSED_QKV_DIM[kind]
            # a shared tensor is copied: safetensors stores no tensor twice
            parts = [tensor.clone() for _ in range(3)] if dim is None else tensor.chunk(3, dim)
            return [(f"{prefix}.self_attn.{projection}.{kind}", part)
                    for projection, part in zip(("q_proj", "k_proj", "v_proj"), parts,
                                                strict=True)]
        if layer.group(2) in LAYER_MODULES:
            return [(f"{prefix}.{LAYER_MODULES[layer.group(2)]}.{kind}", tensor)]
    raise SdkError(f"The checkpoint holds '{name}', which is no weight of Qwen (v1)'s "
                   "QWenLMHeadModel: is it a Qwen (v1) checkpoint?")


def write_tokenizer(source: Path, destination: Path) -> None:
    """A fast tokenizer from qwen.tiktoken whose ids equal QWenTokenizer's: tiktoken's BPE
    ranks as merges, Qwen's pre-tokenizer pattern, its 208 special tokens at their ids."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    from sft_plugin_qwen import QWEN_JINJA

    vocab = source / VOCAB_FILE
    if not vocab.is_file():
        raise SdkError(f"{source} has no {VOCAB_FILE}, Qwen (v1)'s tokenizer file.")
    backend = TikTokenConverter(str(vocab), pattern=PAT_STR,
                                extra_special_tokens=SPECIAL_TOKENS).converted()
    if backend.token_to_id(ENDOFTEXT) != SPECIAL_START_ID:  # added after the last rank
        raise SdkError(f"{vocab} does not hold Qwen's {SPECIAL_START_ID} ranks.")
    backend.normalizer = normalizers.NFC()  # QWenTokenizer.tokenize normalises to NFC first
    window = read_json(source / "config.json").get("seq_length")
    # Qwen's tokenizer sets no eos or pad token. As Qwen1.5/Qwen2 chat models: a reply ends
    # with <|im_end|> (the eos of a chat model), and batches pad with <|endoftext|>, the
    # document separator, which no chat turn contains.
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=IM_END,
                                        pad_token=ENDOFTEXT,
                                        **({"model_max_length": window} if window else {}))
    tokenizer.chat_template = QWEN_JINJA  # make_context's format, as the "qwen" template
    tokenizer.save_pretrained(str(destination))


def generation_config(official: dict[str, Any], source: Path) -> dict[str, Any]:
    """The chat models stop on <|im_end|> (make_context's turns; get_stop_words_ids) and on
    <|endoftext|> (the official generation_config's eos); the official sampling settings
    are kept."""
    settings: dict[str, Any] = {}
    file = source / "generation_config.json"
    if file.is_file():
        official_generation = read_json(file)
        settings = {key: official_generation[key] for key in SAMPLING
                    if key in official_generation}
    return {**settings, "eos_token_id": [IM_END_ID, ENDOFTEXT_ID], "pad_token_id": ENDOFTEXT_ID}


QWEN_V1_TO_QWEN2 = Conversion(layout="qwen2", version=1, config=qwen2_config,
                              tensors=qwen2_tensors, tokenizer=write_tokenizer,
                              generation=generation_config)


def load(spec: Any, options: Any) -> tuple[Any, Any]:
    """ModelSpec loader of the Qwen (v1) model types: the converted Qwen2 copy."""
    return load_native(spec, options, QWEN_V1_TO_QWEN2)


def load_tokenizer(spec: Any, options: Any) -> Any:
    return native_tokenizer(spec, options, QWEN_V1_TO_QWEN2)



# --- GPTQ: Qwen-7B/14B/72B-Chat-Int4 and -Int8 ---------------------------------------------------
#
# These are auto-gptq checkpoints (QwenLM/Qwen's run_gptq.py: bits 4 or 8, group_size 128,
# desc_act false, sym): c_attn, c_proj, w1, w2 and mlp.c_proj are QuantLinear layers (qweight,
# qzeros, scales, g_idx, c_attn's bias); wte, the norms and lm_head stay fp16. The same renaming
# and c_attn split (FUSED_QKV_DIM) make them a GPTQ Qwen2 folder, which transformers loads
# through its GPTQ integration (optimum + gptqmodel kernels).

GPTQ_PARTS = ("qweight", "qzeros", "scales", "g_idx")
# The official quantization_config keys transformers' GPTQConfig reads (the others name how the
# checkpoint was made: damp_percent, true_sequential, static_groups, model_file_base_name...,
# kept as they are). auto-gptq wrote no checkpoint_format: its format is "gptq" (v1: each
# stored zero point is the zero point minus one).
GPTQ_PACKAGES = {"optimum": "optimum>=2.3", "gptqmodel": "gptqmodel>=7.0,<7.7"}


def gptq_settings(official: dict[str, Any]) -> dict[str, Any]:
    """The official quantization_config, checked: GPTQ, 4 or 8 bits, in a format whose zero
    points we know, with hidden_size a whole number of packed words (the c_attn split)."""
    settings = official.get("quantization_config")
    if not isinstance(settings, dict) or settings.get("quant_method") != "gptq":
        raise SdkError("config.json has no GPTQ quantization_config: this is not a Qwen "
                       "-Int4/-Int8 checkpoint (use the qwen-*-chat model type for the others).")
    bits = settings.get("bits")
    checkpoint_format = settings.get("checkpoint_format", settings.get("format", "gptq"))
    if bits not in (4, 8) or checkpoint_format not in ("gptq", "gptq_v2"):
        raise SdkError(f"quantization_config has bits {bits}, format {checkpoint_format}: the Qwen "
                       "GPTQ types read 4 or 8 bits in the gptq/gptq_v2 formats.")
    hidden = official.get("hidden_size", DEFAULTS["hidden_size"])
    if hidden % (32 // bits):
        raise SdkError(f"hidden_size {hidden} is not a multiple of {32 // bits}: c_attn's packed "
                       "zero points cannot be split into q, k and v.")
    return {**settings, "checkpoint_format": checkpoint_format}


def qwen2_gptq_config(official: dict[str, Any]) -> dict[str, Any]:
    """The Qwen2 config.json of a GPTQ Qwen (v1) config.json: the official quantization_config
    kept, under GPTQConfig's names (checkpoint_format given explicitly)."""
    settings = gptq_settings(official)
    # the scales (and wte, norms, lm_head) are fp16: the GPTQ kernels compute in it
    return {**qwen2_config(official), "quantization_config": settings, "dtype": "float16"}


def dequantize(qweight: Any, qzeros: Any, scales: Any, g_idx: Any, bits: int,
               checkpoint_format: str = "gptq") -> Any:
    """The nn.Linear weight [out, in] of one GPTQ layer, exactly (in the scales' dtype):
    ``scales[g] * (q - zero[g])`` for the group ``g = g_idx[i]`` of input row i.

    qweight [in / w, out] packs w = 32 / bits input rows per int32 (row j in bits j*bits..),
    qzeros [groups, out / w] packs w output columns the same way. auto-gptq's "gptq" (v1)
    format stores each zero point minus one (its pack does ``zeros -= 1``, its forward
    ``zeros + 1``); "gptq_v2" stores it as it is."""
    import torch

    mask = (1 << bits) - 1
    shifts = torch.arange(0, 32, bits, dtype=torch.int32)
    # arithmetic shifts of negative words still leave the right low bits under the mask
    codes = ((qweight.unsqueeze(1) >> shifts.view(1, -1, 1)) & mask).reshape(-1, qweight.shape[1])
    zeros = ((qzeros.unsqueeze(2) >> shifts.view(1, 1, -1)) & mask).reshape(qzeros.shape[0], -1)
    zeros = zeros + (1 if checkpoint_format == "gptq" else 0)
    group = g_idx.long()
    weight = scales.float()[group] * (codes - zeros[group]).float()  # exact in fp32
    return weight.t().contiguous().to(scales.dtype)


# The parts of GPTQ layers read so far whose layer is not whole yet (they are stored one
# tensor at a time); a layer is dequantized as soon as its four parts are in.
PENDING: dict[str, dict[str, Any]] = {}


def dequantized_tensors(name: str, tensor: Any, official: dict[str, Any]) -> Tensors:
    """The fp16 Qwen2 weights of one weight of a GPTQ checkpoint: each GPTQ layer dequantized
    (:func:`dequantize`) into the weight qwen2_tensors then renames (and splits, c_attn)."""
    module, _, kind = name.rpartition(".")
    if kind not in GPTQ_PARTS:
        return qwen2_tensors(name, tensor, official)
    parts = PENDING.setdefault(module, {})
    parts[kind] = tensor
    if len(parts) < len(GPTQ_PARTS):
        return []
    del PENDING[module]
    settings = gptq_settings(official)
    weight = dequantize(**parts, bits=settings["bits"],
                        checkpoint_format=settings["checkpoint_format"])
    return qwen2_tensors(f"{module}.weight", weight, official)


def qwen2_dequantized_config(official: dict[str, Any]) -> dict[str, Any]:
    """The plain fp16 Qwen2 config.json of a GPTQ checkpoint dequantized."""
    gptq_settings(official)
    PENDING.clear()  # convert() reads the config first: nothing left from a failed conversion
    return {**qwen2_config(official), "dtype": "float16"}


QWEN_GPTQ_TO_QWEN2 = Conversion(layout="qwen2", variant="gptq", version=1,
                                config=qwen2_gptq_config, tensors=qwen2_tensors,
                                tokenizer=write_tokenizer, generation=generation_config)
QWEN_GPTQ_DEQUANTIZED = Conversion(layout="qwen2", variant="gptq-dequantized", version=1,
                                   config=qwen2_dequantized_config, tensors=dequantized_tensors,
                                   tokenizer=write_tokenizer, generation=generation_config)


def missing_gptq_packages() -> list[str]:
    import importlib.util

    return [package for package in GPTQ_PACKAGES if importlib.util.find_spec(package) is None]


def gptq_conversion(spec: Any, options: Any) -> Conversion:
    """Which copy of a GPTQ checkpoint a run loads: the GPTQ one (transformers' GPTQ
    integration), or the dequantized fp16 one, to merge an adapter into (`--merge-lora`: peft
    cannot merge into GPTQ layers) or to re-quantize with bitsandbytes (--quantization-bit).
    Without optimum/gptqmodel and without --quantization-bit: an error naming the install,
    before any weight is read."""
    if DEQUANTIZED_BASE.get() or options.quantization_bit:
        return QWEN_GPTQ_DEQUANTIZED
    missing = missing_gptq_packages()
    if missing:
        install = " ".join(f"'{GPTQ_PACKAGES[package]}'" for package in GPTQ_PACKAGES)
        raise SdkError(
            f"Model type '{spec.model_type}' is a GPTQ checkpoint, which transformers loads with "
            f"optimum and gptqmodel ({', '.join(missing)} missing): pip install {install}. "
            "Or pass --quantization-bit 4 (or 8) to dequantize its weights and re-quantize them "
            "with bitsandbytes (approximate), or use the unquantized model type "
            f"'{spec.model_type.rsplit('-', 1)[0]}'.")
    return QWEN_GPTQ_TO_QWEN2


def load_gptq(spec: Any, options: Any) -> tuple[Any, Any]:
    """ModelSpec loader of the Qwen (v1) GPTQ types (see gptq_conversion for which copy)."""
    from dataclasses import replace

    import click
    import torch

    from sdk.models.loader import load_pretrained, model_folder, torch_dtype

    conversion = gptq_conversion(spec, options)
    folder = native_folder(model_folder(spec, options), conversion)
    options = replace(options, trust_remote_code=False)
    if conversion is QWEN_GPTQ_DEQUANTIZED:
        if options.quantization_bit:
            click.echo(f"[sdk] {spec.model_type}: --quantization-bit {options.quantization_bit}: "
                       "its GPTQ weights were dequantized (exactly, to fp16) and are re-quantized "
                       f"with bitsandbytes to {options.quantization_bit} bits: an approximation "
                       "of the GPTQ model, not the GPTQ model itself.", err=True)
        else:
            click.echo(f"[sdk] {spec.model_type}: the GPTQ weights dequantized exactly (fp16) "
                       "for the merge (peft cannot merge into GPTQ layers)", err=True)
        return load_pretrained(folder, options)
    from transformers import GPTQConfig

    if torch_dtype(options.dtype) == torch.float32:
        # gptqmodel's kernels compute in fp16/bf16 only, and the checkpoint's scales are fp16
        options = replace(options, dtype="fp16")
    settings = read_json(folder / "config.json")["quantization_config"]
    gpu = torch.cuda.is_available()
    # On the CPU, gptq_torch: gptqmodel's own choice there (TorchAtenLinear, 4-bit) switches
    # for good to an inference-only kernel after any no-grad forward (an eval, a sample
    # generation), after which LoRA gradients are silently wrong (the research notes measured
    # ~100% relative error). On CUDA, gptqmodel's "auto_trainable" picks a kernel with a
    # backward pass; that path is untested here (no GPU).
    backend = "auto_trainable" if gpu else "gptq_torch"
    config = GPTQConfig(bits=settings["bits"], backend=backend)
    # gptqmodel prints its banner and loading notes to stdout, where `sdk infer` writes replies
    with contextlib.redirect_stdout(sys.stderr):
        return load_pretrained(folder, options, model_kwargs={
            "quantization_config": config, "device_map": {"": 0 if gpu else "cpu"}})


def load_gptq_tokenizer(spec: Any, options: Any) -> Any:
    return native_tokenizer(spec, options, gptq_conversion(spec, options))
