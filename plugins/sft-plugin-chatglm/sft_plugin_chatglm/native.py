"""ChatGLM2 and ChatGLM3 checkpoints in transformers' own Glm architecture (GlmForCausalLM).

The official checkpoints (THUDM, now zai-org) ship remote code written for transformers 4.
Their architecture is exactly transformers' Glm: pre-norm RMSNorm blocks, multi-query
attention with a bias on the fused query/key/value projection only, a SwiGLU MLP whose fused
input projection is chunked (gate, up) as ChatGLM's ``swiglu`` chunks it, and a rotary
embedding on the first half of each head's channels in interleaved pairs, which is Glm's
``partial_rotary_factor`` 0.5 with its interleaved ``rotate_half``. So the conversion is a
renaming plus the split of ``query_key_value``; the tests compare logits and generations with
the official code.

In float32 the two are equal (the tests compare logits at 1e-5). In half precision one thing
differs, on purpose: ChatGLM2's forward_impl computes the rotary angles in the weights' dtype
(the inv_freq buffer's), so in bfloat16 its positions past 256 are rounded (cos/sin off by up
to 2) and in float16 those past 2,048; ChatGLM3's code fixed that (angles in float32), and
Glm computes them in float32 as ChatGLM3 does.

GLM-4 (glm4-9b-chat) is not converted: its remote-code layout needs a tiktoken tokenizer
conversion that could not be checked against its files here; Zhipu publishes the same weights
in this native layout (glm-4-9b-chat-hf), which glm4-9b-chat loads instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.models.native import (
    Conversion,
    Tensors,
    load_native,
    native_tokenizer,
    read_json,
    read_sentencepiece,
    require_protobuf,
    sentencepiece_tokenizer,
)

# ChatGLMConfig's defaults (configuration_chatglm.py), for keys a config.json leaves out;
# rope_ratio is the 32K releases' addition (their configuration_chatglm.py, default 1). The
# eos and pad ids, which ChatGLMConfig leaves to the config.json, are the tokenizer's.
DEFAULTS: dict[str, Any] = dict(
    num_layers=28, padded_vocab_size=65024, hidden_size=4096, ffn_hidden_size=13696,
    kv_channels=128, num_attention_heads=32, seq_length=2048, hidden_dropout=0.0,
    attention_dropout=0.0, layernorm_epsilon=1e-5, rmsnorm=True,
    apply_residual_connection_post_layernorm=False, post_layer_norm=True, add_bias_linear=False,
    add_qkv_bias=False, multi_query_attention=False, multi_query_group_num=1,
    fp32_residual_connection=False, quantization_bit=0, pre_seq_len=None, rope_ratio=1,
    torch_dtype=None, pad_token_id=0, eos_token_id=2)
# The embedding rows of every ChatGLM2/3 release; GLM-4's remote-code checkpoints (same
# model_type "chatglm") have 151,552.
CHATGLM_VOCAB_ROWS = 65024
# Official settings the native architecture cannot reproduce: key -> (official default, why).
UNMAPPED = {
    "rmsnorm": (True, "LayerNorm instead of RMSNorm"),
    "apply_residual_connection_post_layernorm": (False, "residuals taken after the norms"),
    "post_layer_norm": (True, "no final norm"),
    "add_bias_linear": (False, "biases on the output and MLP projections"),
    "fp32_residual_connection": (False, "an fp32 residual stream"),
    "hidden_dropout": (0.0, "dropout on the residual branches"),
}
# Official keys that change nothing the official code computes under torch 2, so they are not
# read: original_rope (RotaryEmbedding stores it, never uses it), bias_dropout_fusion,
# classifier_dropout, apply_query_key_layer_scaling and attention_softmax_in_fp32 (read only by
# CoreAttention's torch<2 path; with torch 2 it calls scaled_dot_product_attention, as Glm's
# SDPA does), prefix_projection (only with pre_seq_len, refused).
# tokenization_chatglm.py (SPTokenizer): these follow the SentencePiece pieces, numbered from
# the piece count on, in this order; ChatGLM3 adds the role tokens.
CHATGLM2_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")
# get_prefix_tokens(): what build_inputs_with_special_tokens puts in front of a text.
PREFIX = ("[gMASK]", "sop")
LAYER = re.compile(r"transformer\.encoder\.layers\.(\d+)\.(.+)")
RENAMED = {
    "transformer.embedding.word_embeddings.weight": "model.embed_tokens.weight",
    "transformer.encoder.final_layernorm.weight": "model.norm.weight",
    "transformer.output_layer.weight": "lm_head.weight",
}
LAYER_RENAMED = {
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    # ChatGLM's swiglu: chunk(2) -> silu(first) * second; GlmMLP: chunk(2) -> (gate, up),
    # up * silu(gate): the same halves in the same order.
    "mlp.dense_h_to_4h.weight": "mlp.gate_up_proj.weight",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
}


def setting(official: dict[str, Any], key: str) -> Any:
    """A config value as ChatGLMConfig reads it: the config.json's, else its default."""
    return official.get(key, DEFAULTS[key])


def native_config(official: dict[str, Any], version: int) -> dict[str, Any]:
    """GlmConfig (config.json) of a ChatGLM``version`` config.json, or an SdkError for a
    checkpoint the native architecture cannot reproduce."""
    check_config(official)
    heads = setting(official, "num_attention_heads")
    groups = (setting(official, "multi_query_group_num")
              if setting(official, "multi_query_attention") else heads)
    window = setting(official, "seq_length")
    ratio = setting(official, "rope_ratio")
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": 10000.0,
                            # ChatGLMModel: RotaryEmbedding(kv_channels // 2): half of each head
                            "partial_rotary_factor": 0.5}
    if ratio != 1 and version == 3:
        # ChatGLM3 (32K, later 6B revisions): forward_impl's base = 10000 * rope_ratio.
        rope["rope_theta"] = 10000.0 * ratio
    elif ratio != 1:
        # ChatGLM2-6B-32K: positions divided by rope_ratio (position interpolation), which is
        # transformers' linear scaling. Its seq_length (32,768) is the window it was trained
        # on with the ratio applied; the window before stretching tells the SDK (context
        # windows, --rope-scaling) that seq_length is already the stretched one.
        rope.update(rope_type="linear", factor=float(ratio),
                    original_max_position_embeddings=int(window / ratio))
    return {
        "architectures": ["GlmForCausalLM"],
        "model_type": "glm",
        "vocab_size": setting(official, "padded_vocab_size"),
        "hidden_size": setting(official, "hidden_size"),
        "intermediate_size": setting(official, "ffn_hidden_size"),
        "num_hidden_layers": setting(official, "num_layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": groups,
        "head_dim": setting(official, "kv_channels"),
        "hidden_act": "silu",
        "attention_bias": bool(setting(official, "add_qkv_bias")),
        "attention_dropout": setting(official, "attention_dropout"),
        "rms_norm_eps": setting(official, "layernorm_epsilon"),
        # The official code builds its rotary table for seq_length positions and cannot index
        # past it: the same window.
        "max_position_embeddings": window,
        "rope_parameters": rope,
        "tie_word_embeddings": False,  # ChatGLM's output_layer is never tied
        "pad_token_id": setting(official, "pad_token_id"),
        "eos_token_id": setting(official, "eos_token_id"),
        "bos_token_id": None,
        "use_cache": True,
        "dtype": setting(official, "torch_dtype"),
    }


def check_config(official: dict[str, Any]) -> None:
    """Refuse, before any weight is read, the checkpoints the native Glm cannot reproduce, and
    a conversion that could not read the tokenizer."""
    # protobuf reads tokenizer.model: a dependency of this plugin but not of transformers
    require_protobuf("ChatGLM2/3")
    if setting(official, "padded_vocab_size") > CHATGLM_VOCAB_ROWS:
        raise SdkError("This is a GLM-4 checkpoint in its remote-code layout (vocabulary "
                       f"{setting(official, 'padded_vocab_size')}), not ChatGLM2/3. Use "
                       "--model-type glm4-9b-chat-hf with Zhipu's transformers-native release "
                       "of the same weights (zai-org/glm-4-9b-chat-hf).")
    if setting(official, "quantization_bit"):
        raise SdkError(f"This checkpoint is quantized to {official['quantization_bit']} bits "
                       "by ChatGLM's own code (an -int4/-int8 release), which transformers "
                       "cannot load. Use the float16 release with --quantization-bit 4 or 8.")
    if setting(official, "pre_seq_len") is not None:
        raise SdkError("This checkpoint carries a P-Tuning v2 prefix encoder (pre_seq_len "
                       f"{official['pre_seq_len']}). Use the base checkpoint; sdk sft "
                       "--sft-type ptuning trains such prefixes.")
    if not isinstance(setting(official, "kv_channels"), int):
        raise SdkError("config.json has no kv_channels (the channels per attention head).")
    for key, (default, why) in UNMAPPED.items():
        if setting(official, key) != default:
            raise SdkError(f"This ChatGLM checkpoint sets {key}={official[key]!r} ({why}); "
                           "transformers' Glm architecture has no such setting, so it cannot "
                           "load it exactly. Only the released ChatGLM2/3 settings "
                           f"({key}={default!r}) are supported.")


def native_tensors(name: str, tensor: Any, official: dict[str, Any]) -> Tensors:
    """The Glm weights one official weight becomes."""
    if name in RENAMED:
        return [(RENAMED[name], tensor)]
    if name == "transformer.rotary_pos_emb.inv_freq":
        # Only its dtype and device are read: forward_impl recomputes the frequencies from
        # base 10000 (times rope_ratio) as Glm's rotary embedding does from its config.
        return []
    match = LAYER.fullmatch(name)
    if match:
        layer, rest = match.groups()
        prefix = f"model.layers.{layer}."
        if rest in LAYER_RENAMED:
            return [(prefix + LAYER_RENAMED[rest], tensor)]
        if rest in ("self_attention.query_key_value.weight",
                    "self_attention.query_key_value.bias"):
            kind = rest.rsplit(".", 1)[1]
            return [(f"{prefix}self_attn.{part}_proj.{kind}", value)
                    for part, value in zip("qkv", split_qkv(tensor, official), strict=True)]
    raise SdkError(f"Unexpected weight {name} in a ChatGLM2/3 checkpoint: it is not one of "
                   "the official model's, so it cannot be converted.")


def split_qkv(tensor: Any, official: dict[str, Any]) -> tuple[Any, Any, Any]:
    """query_key_value's rows as the official SelfAttention splits its output."""
    heads, channels = setting(official, "num_attention_heads"), setting(official, "kv_channels")
    if setting(official, "multi_query_attention"):
        # [all query heads | key groups | value groups]
        groups = setting(official, "multi_query_group_num")
        parts = tensor.split([heads * channels, groups * channels, groups * channels])
    else:
        # per head [query | key | value] (the view (heads, 3 * channels), then a split in 3)
        rows = tensor.reshape(heads, 3, channels, *tensor.shape[1:])
        parts = tuple(rows[:, index].reshape(heads * channels, *tensor.shape[1:])
                      for index in range(3))
    return tuple(part.clone() for part in parts)  # no shared storage in one safetensors file


def read_proto(source: Path) -> Any:
    """The SentencePiece model of ``source``'s tokenizer.model."""
    return read_sentencepiece(source, "ChatGLM2/3",
                              "GLM-4's is tiktoken's: use --model-type glm4-9b-chat-hf")


def special_tokens(version: int) -> tuple[str, ...]:
    return CHATGLM2_TOKENS + (ROLE_TOKENS if version == 3 else ())


def write_tokenizer(source: Path, destination: Path, version: int) -> None:
    """A fast tokenizer with the official ChatGLMTokenizer's ids.

    The SentencePiece model converts exactly (transformers' SpmConverter follows its own
    settings); the special tokens get SPTokenizer's ids, after the pieces. They are special
    tokens of the fast tokenizer, so the template engine finds them in rendered text ("sop"
    and "eop" only as whole words, never inside one such as "Aesop"), as ChatGLM3's tokenizer
    does with encode_special_tokens (the setting its chat template needs) for its role
    tokens. With add_special_tokens, [gMASK] sop go in front, as build_inputs_with_special_tokens
    puts them (and a pair gets the eos after its second text)."""
    from tokenizers import AddedToken, processors
    from transformers import PreTrainedTokenizerFast

    proto = read_proto(source)
    backend, vocab = sentencepiece_tokenizer(proto)
    tokens = special_tokens(version)
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False,
                                           single_word=token.isalpha()) for token in tokens])
    ids = {token: backend.token_to_id(token) for token in tokens}
    if list(ids.values()) != list(range(len(vocab), len(vocab) + len(tokens))):
        raise SdkError(f"{source / 'tokenizer.model'} already holds ChatGLM's special tokens "
                       f"as pieces ({ids}); it is not ChatGLM's tokenizer.")
    eos = proto.trainer_spec.eos_piece
    backend.post_processor = processors.TemplateProcessing(
        single=" ".join([*PREFIX, "$A"]), pair=" ".join([*PREFIX, "$A", "$B:1", f"{eos}:1"]),
        special_tokens=[*((token, ids[token]) for token in PREFIX), (eos, vocab[eos])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token=proto.trainer_spec.unk_piece, eos_token=eos,
        # ChatGLMTokenizer pads with <unk>; its bos <s> is never used
        pad_token=proto.trainer_spec.unk_piece, clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"])
    tokenizer.save_pretrained(str(destination))


def generation_config(official: dict[str, Any], source: Path, version: int) -> dict[str, Any]:
    """generation_config.json: the checkpoint's own, if it has one, with the ids a reply ends
    at: the eos, and for ChatGLM3 also <|user|> and <|observation|> (its chat() passes
    these three as eos_token_id)."""
    own = source / "generation_config.json"
    settings = json.loads(own.read_text(encoding="utf-8")) if own.is_file() else {}
    settings.pop("transformers_version", None)
    settings.pop("_from_model_config", None)
    eos = setting(official, "eos_token_id")
    if version == 3 and "eos_token_id" not in settings:
        pieces = len(read_proto(source).pieces)
        tokens = special_tokens(3)
        eos = [eos, *(pieces + tokens.index(token) for token in ("<|user|>", "<|observation|>"))]
    settings.setdefault("eos_token_id", eos)
    settings.setdefault("pad_token_id", setting(official, "pad_token_id"))
    return settings


def conversion(version: int) -> Conversion:
    """The Conversion of ChatGLM2 (2) or ChatGLM3 (3) checkpoints."""
    return Conversion(layout="glm", version=1, config=partial(native_config, version=version),
                      tensors=native_tensors, tokenizer=partial(write_tokenizer, version=version),
                      generation=partial(generation_config, version=version))


def spec_version(spec: Any) -> int:
    """ChatGLM2 or 3, by the model type's chat format."""
    return 3 if spec.template == "chatglm3" else 2


def official_folder(spec: Any, options: Any) -> Any:
    """The load options with the official folder (``--model-id-or-path`` or the hub copy) as
    model_dir, checked to be of the model type's generation."""
    from sdk.models.loader import model_folder

    folder = model_folder(spec, options)
    check_generation(folder, spec)
    return replace(options, model_dir=str(folder))


def check_generation(folder: Path, spec: Any) -> None:
    """A ChatGLM3 folder loaded as a ChatGLM2 model type (or the reverse) is refused: the two
    read rope_ratio differently (the 32K releases) and have other special tokens. The official
    code tells them apart (it is read, never run): ChatGLM3's tokenizer builds its role-token
    chat input (build_chat_input), ChatGLM2's does not. A folder without the code, or GLM-4's
    (refused by the conversion, naming it), is not checked."""
    code = folder / "tokenization_chatglm.py"
    config = folder / "config.json"
    if not code.is_file() or not config.is_file() or setting(
            read_json(config), "padded_vocab_size") > CHATGLM_VOCAB_ROWS:
        return
    found = 3 if "def build_chat_input" in code.read_text(encoding="utf-8",
                                                            errors="replace") else 2
    if found != spec_version(spec):
        raise SdkError(
            f"'{folder}' holds a ChatGLM{found} checkpoint (its tokenization_chatglm.py is "
            f"ChatGLM{found}'s), but --model-type {spec.model_type} is a ChatGLM"
            f"{spec_version(spec)} model: its rotary scaling and special tokens would not fit. "
            f"Use --model-type chatglm{found}-6b or chatglm{found}-6b-32k; --template picks "
            "another chat format.")


def load(spec: Any, options: Any) -> tuple[Any, Any]:
    """Loader of the ChatGLM2/3 model types: the official folder converted once to Glm."""
    return load_native(spec, official_folder(spec, options), conversion(spec_version(spec)))


def load_tokenizer(spec: Any, options: Any) -> Any:
    return native_tokenizer(spec, official_folder(spec, options),
                            conversion(spec_version(spec)))


def check_glm4_folder(options: Any) -> None:
    """glm4-9b-chat loads Zhipu's native release; a --model-id-or-path folder in the
    remote-code layout (model_type chatglm) is refused, naming it."""
    if not options.model_dir:
        return
    config = Path(options.model_dir) / "config.json"
    found = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if found == "chatglm":
        raise SdkError(
            f"--model-id-or-path '{options.model_dir}' is in the remote-code layout "
            "(model_type chatglm). sft-sdk loads GLM-4-9B-Chat from Zhipu's transformers-native "
            "release of the same weights, glm-4-9b-chat-hf (zai-org/glm-4-9b-chat-hf on Hugging "
            "Face, ZhipuAI/glm-4-9b-chat-hf on ModelScope): download that one, or leave "
            "--model-id-or-path out. A ChatGLM2/3 folder loads with --model-type chatglm2-6b or "
            "chatglm3-6b.")


def load_glm4(spec: Any, options: Any) -> tuple[Any, Any]:
    from sdk.models.loader import load_from_hub

    check_glm4_folder(options)
    return load_from_hub(spec, options)


def load_glm4_tokenizer(spec: Any, options: Any) -> Any:
    from sdk.models.loader import tokenizer_from_folder

    check_glm4_folder(options)
    return tokenizer_from_folder(spec, options)
