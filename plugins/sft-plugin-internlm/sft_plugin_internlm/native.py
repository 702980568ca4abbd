"""InternLM (v1) and InternLM2 / InternLM2.5 checkpoints in transformers' Llama architecture.

Both families are Llama with other names, so their official checkpoints convert exactly
(``sdk.models.native``) and then load with no remote code:

- InternLM v1 (``modeling_internlm.py``) already uses Llama's parameter names; ``bias`` (true for
  internlm-chat-7b) puts biases on q/k/v/o, Llama's ``attention_bias`` (the MLP has none in
  both). The rotary base is 10000 (the code reads no config key for it; a later revision's
  ``rotary`` dict, {"base", "type": "origin"|"dynamic", "scaling_factor"}, is read when present).
- InternLM2 (``modeling_internlm2.py``) fuses q/k/v into ``attention.wqkv``, laid out per
  key-value group as [the group's query heads..., its key head, its value head]; the rest is a
  renaming (tok_embeddings, attention.wo, feed_forward.w1/w3/w2, attention_norm/ffn_norm,
  output).

Tokenizers: fast ones built from ``tokenizer.model`` (sentencepiece's own pieces and scores,
so the ids are sentencepiece's), with the special tokens the official slow tokenizers define.
"""

from __future__ import annotations

import re
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.models.native import (
    Conversion,
    Tensors,
    add_special_pieces,
    load_native,
    native_tokenizer,
    read_json,
    read_sentencepiece,
    sentencepiece_tokenizer,
)

# configuration_internlm.py's InternLMConfig defaults: what the official code uses for a key
# the config.json leaves out.
V1_DEFAULTS: dict[str, Any] = dict(
    vocab_size=103168, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
    num_attention_heads=32, hidden_act="silu", max_position_embeddings=2048,
    initializer_range=0.02, rms_norm_eps=1e-6, use_cache=True, pad_token_id=0, bos_token_id=1,
    eos_token_id=2, tie_word_embeddings=False, bias=True)
# configuration_internlm2.py's InternLM2Config defaults (num_key_value_heads: the heads).
V2_DEFAULTS: dict[str, Any] = dict(
    V1_DEFAULTS, num_key_value_heads=None, rope_theta=10000, rope_scaling=None)
# InternLMRotaryEmbedding's base: modeling_internlm.py passes none, so its default.
V1_ROPE_THETA = 10000
# The token that ends a reply: the official chat() stops generating at it as well as at </s>.
END_OF_REPLY = {"internlm": "<eoa>", "internlm2": "<|im_end|>"}
# InternLM v1's chat markers: sentencepiece pieces of its tokenizer.model (user-defined, so
# always one token). Special here so that a decoded reply leaves them out, like InternLM2's.
V1_SPECIAL = ["<eoh>", "<eoa>"]


def official(config: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """The official config as the remote code sees it: its keys over the class defaults."""
    return {**defaults, **{key: value for key, value in config.items() if key in defaults}}


def llama_config(config: dict[str, Any], defaults: dict[str, Any], kv_heads: int,
                 rope: dict[str, Any]) -> dict[str, Any]:
    """LlamaConfig keys for an InternLM config (the keys both read the same way)."""
    settings = official(config, defaults)
    native = {key: settings[key] for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "hidden_act", "max_position_embeddings", "initializer_range",
        "rms_norm_eps", "use_cache", "pad_token_id", "bos_token_id", "eos_token_id",
        "tie_word_embeddings")}
    native.update(
        model_type="llama", architectures=["LlamaForCausalLM"], num_key_value_heads=kv_heads,
        head_dim=settings["hidden_size"] // settings["num_attention_heads"],
        # InternLM's `bias` is on the attention's four projections only, as Llama's
        attention_bias=bool(settings["bias"]), mlp_bias=False, rope_parameters=rope)
    dtype = config.get("torch_dtype") or config.get("dtype")
    if dtype:
        native["dtype"] = dtype
    return native


def v1_config(config: dict[str, Any]) -> dict[str, Any]:
    rotary = config.get("rotary")
    if rotary is None:  # the code in internlm-chat-7b / internlm-20b: plain RoPE, base 10000
        rope = {"rope_type": "default", "rope_theta": float(V1_ROPE_THETA)}
    else:
        rope = v1_rotary(rotary)
    heads = official(config, V1_DEFAULTS)["num_attention_heads"]
    return llama_config(config, V1_DEFAULTS, heads, rope)


def v1_rotary(rotary: Any) -> dict[str, Any]:
    """The later InternLM v1 code's ``rotary`` dict: "origin" is plain RoPE; "dynamic" its
    dynamic NTK (the base grows as base * (f * L / window - (f - 1)) ** (d / (d - 2)) for a
    length L past the window, transformers' "dynamic" formula), scaling_factor 1.0 by default.
    That revision's code is not among the files the tests run (they hold the earlier one, which
    reads no such key); the formula is read from a port of it (mindnlp's InternLM)."""
    kind = rotary.get("type") if isinstance(rotary, dict) else None
    if kind not in ("origin", "dynamic") or "base" not in rotary:
        raise SdkError(f"config.json's rotary {rotary!r} is not one the InternLM code reads "
                       '({"base": ..., "type": "origin" or "dynamic"}).')
    rope = {"rope_type": "default", "rope_theta": float(rotary["base"])}
    if kind == "dynamic":
        rope.update(rope_type="dynamic", factor=float(rotary.get("scaling_factor", 1.0)))
    return rope


def v2_config(config: dict[str, Any]) -> dict[str, Any]:
    settings = official(config, V2_DEFAULTS)
    rope = v2_rope(settings["rope_scaling"], float(settings["rope_theta"]))
    kv_heads = settings["num_key_value_heads"] or settings["num_attention_heads"]
    return llama_config(config, V2_DEFAULTS, kv_heads, rope)


def v2_rope(scaling: Any, theta: float) -> dict[str, Any]:
    """modeling_internlm2.py's rope_scaling in transformers' terms. Its "linear" divides the
    positions by the factor and its "dynamic" is the NTK base growth past the window: the
    same formulas as transformers' "linear" and "dynamic", checked against the official code
    in the plugin's tests. Within max_position_embeddings "dynamic" is plain RoPE in both.
    Past it, both recompute the base for the longest sequence seen so far; the official cache
    then keeps that base for shorter inputs too, where transformers goes back to the trained
    one for an input within the window: only a long input's first forward is the same."""
    if scaling is None:
        return {"rope_type": "default", "rope_theta": theta}
    kind = scaling.get("type") if isinstance(scaling, dict) else None
    factor = scaling.get("factor") if isinstance(scaling, dict) else None
    # the official _rope_scaling_validation: these two types, a float factor >= 1
    if kind not in ("linear", "dynamic") or not isinstance(factor, float) or factor < 1:
        raise SdkError(f"config.json's rope_scaling {scaling!r} is not one InternLM2 runs "
                       '(a "linear" or "dynamic" type with a float factor >= 1).')
    return {"rope_type": kind, "factor": factor, "rope_theta": theta}


LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
# InternLM2's names within a layer, and Llama's
V2_LAYER_NAMES = {
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj",
    "feed_forward.w3": "mlp.up_proj", "feed_forward.w2": "mlp.down_proj",
    "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
V2_NAMES = {"model.tok_embeddings.weight": "model.embed_tokens.weight",
            "model.norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
V1_LAYER_PARTS = re.compile(
    r"(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.(weight|bias)"
    r"|(input_layernorm|post_attention_layernorm)\.weight")


def unknown(name: str) -> SdkError:
    return SdkError(f"The checkpoint holds a weight '{name}' that no InternLM model has; is "
                    "--model-id-or-path the folder of the model type it is given with?")


def v1_tensors(name: str, tensor: Any, config: dict[str, Any]) -> Tensors:
    """InternLM v1's names are Llama's; the rotary inv_freq that 2023 checkpoints store
    (a persistent buffer then) is recomputed by Llama, so it is dropped."""
    if ".rotary_emb." in name:
        return []
    layer = LAYER.fullmatch(name)
    if (name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight")
            or (layer and V1_LAYER_PARTS.fullmatch(layer.group(2)))):
        return [(name, tensor)]
    raise unknown(name)


def v2_tensors(name: str, tensor: Any, config: dict[str, Any]) -> Tensors:
    if ".rotary_emb." in name:
        return []
    if name in V2_NAMES:
        return [(V2_NAMES[name], tensor)]
    layer = LAYER.fullmatch(name)
    if not layer:
        raise unknown(name)
    prefix = f"model.layers.{layer.group(1)}."
    module, _, kind = layer.group(2).rpartition(".")
    if module == "attention.wqkv":
        return [(f"{prefix}self_attn.{part}_proj.{kind}", value)
                for part, value in zip("qkv", split_wqkv(tensor, config), strict=True)]
    if module in V2_LAYER_NAMES:
        return [(f"{prefix}{V2_LAYER_NAMES[module]}.{kind}", tensor)]
    raise unknown(name)


def split_wqkv(tensor: Any, config: dict[str, Any]) -> tuple[Any, Any, Any]:
    """q, k and v of a wqkv weight (rows, hidden) or bias (rows,). modeling_internlm2.py reads
    its output as "(h gs d)": h key-value groups, each of gs = heads per group + 2 blocks of
    head_dim rows (the group's query heads, then its key head, then its value head); query
    head h * per_group + g uses key-value head h, as Llama's repeat_kv pairs them."""
    settings = official(config, V2_DEFAULTS)
    heads = settings["num_attention_heads"]
    kv_heads = settings["num_key_value_heads"] or heads
    head_dim = settings["hidden_size"] // heads
    per_group = heads // kv_heads
    grouped = tensor.reshape(kv_heads, per_group + 2, head_dim, *tensor.shape[1:])
    rest = tuple(tensor.shape[1:])
    query = grouped[:, :per_group].reshape(heads * head_dim, *rest)
    key = grouped[:, per_group].reshape(kv_heads * head_dim, *rest)
    value = grouped[:, per_group + 1].reshape(kv_heads * head_dim, *rest)
    return query.clone(), key.clone(), value.clone()


def write_tokenizer(source: Path, destination: Path, extra_special: list[str]) -> None:
    """A fast tokenizer with the official one's ids: sentencepiece's pieces (renamed by
    tokenizer_config.json's added_tokens_decoder, as the official tokenizer shows them), its
    bos/eos/unk/pad, and bos added by default (add_bos_token, true in both families)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    settings = read_json(source / "tokenizer_config.json") if (
        source / "tokenizer_config.json").is_file() else {}
    names = {int(index): entry["content"] if isinstance(entry, dict) else str(entry)
             for index, entry in settings.get("added_tokens_decoder", {}).items()}
    backend, vocab = sentencepiece_tokenizer(read_sentencepiece(source, "InternLM"), names)
    bos, eos, unk, pad = (token_text(settings.get(key), default) for key, default in (
        ("bos_token", "<s>"), ("eos_token", "</s>"), ("unk_token", "<unk>"),
        ("pad_token", "</s>")))
    special = [token_text(token, "") for token in settings.get("additional_special_tokens", [])]
    special += [token for token in extra_special if token not in special]
    add_special_pieces(backend, vocab, [bos, eos, unk, pad, *special], source)
    add_bos, add_eos = settings.get("add_bos_token", True), settings.get("add_eos_token", False)
    single = " ".join([f"{bos}:0"] * add_bos + ["$A:0"] + [f"{eos}:0"] * add_eos)
    pair = " ".join([single] + [f"{bos}:1"] * add_bos + ["$B:1"] + [f"{eos}:1"] * add_eos)
    backend.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos, unk_token=unk, pad_token=pad,
        additional_special_tokens=special, clean_up_tokenization_spaces=False,
        chat_template=settings.get("chat_template"))
    tokenizer.save_pretrained(str(destination))


def token_text(token: Any, default: str) -> str:
    """A tokenizer_config.json token: a string or an AddedToken dict."""
    if isinstance(token, dict):
        return str(token.get("content", default))
    return str(token) if token else default


def generation(config: dict[str, Any], source: Path, family: str) -> dict[str, Any]:
    """The official generation_config.json (if any) with the end-of-reply token as an eos
    id too, as the official chat() passes it."""
    file = source / "generation_config.json"
    settings = read_json(file) if file.is_file() else {}
    ids = official(config, V1_DEFAULTS)
    result = {key: settings.get(key, ids[key])
              for key in ("bos_token_id", "eos_token_id", "pad_token_id")}
    result.update({key: value for key, value in settings.items()
                   if key not in result and not key.startswith("_")
                   and key != "transformers_version"})
    eos = result["eos_token_id"] if isinstance(result["eos_token_id"], list) else [
        result["eos_token_id"]]
    end = reply_end_id(source, family)
    result["eos_token_id"] = eos + [end] if end is not None and end not in eos else eos
    return result


def reply_end_id(source: Path, family: str) -> int | None:
    """The id of <eoa> (v1) or <|im_end|> (InternLM2) in the official tokenizer."""
    config = source / "tokenizer_config.json"
    token = END_OF_REPLY[family]
    if config.is_file():
        for index, entry in read_json(config).get("added_tokens_decoder", {}).items():
            if token_text(entry, "") == token:
                return int(index)
    for index, piece in enumerate(read_sentencepiece(source, "InternLM").pieces):
        if piece.piece == token:
            return index
    return None


# A change to any function above bumps its version: converted folders of older ones are
# not reused.
V1 = Conversion(
    layout="llama", version=1, config=v1_config, tensors=v1_tensors,
    tokenizer=partial(write_tokenizer, extra_special=V1_SPECIAL),
    generation=partial(generation, family="internlm"))
V2 = Conversion(
    layout="llama", version=1, config=v2_config, tensors=v2_tensors,
    tokenizer=partial(write_tokenizer, extra_special=[]),
    generation=partial(generation, family="internlm2"))
CONVERSIONS = {"internlm": V1, "internlm2": V2}


def conversion_for(spec: Any, folder: Path) -> Conversion | None:
    """The conversion of the checkpoint in ``folder`` by its config's model_type; None for a
    folder already in the Llama layout (InternLM v1 copies converted by others, or a run's
    own full checkpoint)."""
    found = read_json(folder / "config.json").get("model_type")
    if found == "llama" and "llama" in spec.config_model_types:
        return None
    if found in CONVERSIONS and found in spec.config_model_types:
        return CONVERSIONS[found]
    raise SdkError(f"{folder} holds a {found!r} model (config.json), not one of "
                   f"{', '.join(spec.config_model_types)}: --model-type {spec.model_type} "
                   "cannot load it.")


def load(spec: Any, options: Any) -> tuple[Any, Any]:
    """``--model-type`` loader: the official checkpoint converted to Llama (once, cached)."""
    from sdk.models.loader import load_pretrained, model_folder

    folder = model_folder(spec, options)
    conversion = conversion_for(spec, folder)
    if conversion is None:
        return load_pretrained(folder, replace(options, trust_remote_code=False))
    # model_dir: the folder already found (a hub download is not looked up twice)
    return load_native(spec, replace(options, model_dir=str(folder)), conversion)


def load_tokenizer(spec: Any, options: Any) -> Any:
    """The converted fast tokenizer alone (data previews), without the weights."""
    from transformers import AutoTokenizer

    from sdk.models.loader import model_folder

    folder = model_folder(spec, options)
    conversion = conversion_for(spec, folder)
    if conversion is None:
        return AutoTokenizer.from_pretrained(str(folder))
    return native_tokenizer(spec, replace(options, model_dir=str(folder)), conversion)

