"""Baichuan2-7B (and Baichuan-7B) checkpoints in transformers' Llama architecture.

The 7B models of both generations are Llama with two differences in the official code
(modeling_baichuan.py): the query, key and value projections are one fused ``W_pack`` linear
(rows q, then k, then v: ``proj.unflatten(-1, (3, hidden_size))``), and Baichuan2's output
layer is a ``NormHead`` that divides each vocabulary row of ``lm_head.weight`` by its L2 norm
before use. Rotary embedding (base 10000, rotate-half), RMSNorm, SwiGLU MLP and untied
embeddings are Llama's. So the conversion splits ``W_pack`` into ``q_proj`` / ``k_proj`` /
``v_proj`` and writes the normalised ``lm_head``; nothing of the official code runs.

The 13B models (Baichuan-13B, Baichuan2-13B) use ALiBi instead of rotary embedding, which no
native Llama-like architecture of transformers has: their checkpoints are refused here.
"""

from __future__ import annotations

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
    require_protobuf,
    sentencepiece_tokenizer,
)

# Baichuan2's vocabulary size. The official code has no flag for NormHead: Baichuan2's
# modeling file always builds it, Baichuan-7B's (64,000 tokens) never. vLLM, llama.cpp and
# FasterTransformer tell the two apart by this vocabulary size, and so does this conversion.
BAICHUAN2_VOCAB_SIZE = 125696
# BaichuanConfig's defaults (configuration_baichuan.py of Baichuan2-7B), for keys a config.json
# leaves out: the official code reads them from the config object, which has these.
DEFAULTS = {"vocab_size": 125696, "hidden_size": 4096, "intermediate_size": 11008,
            "num_hidden_layers": 32, "num_attention_heads": 32, "hidden_act": "silu",
            "max_position_embeddings": 4096, "initializer_range": 0.02, "rms_norm_eps": 1e-6,
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
# RotaryEmbedding(..., base=10000) in modeling_baichuan.py: not a config key.
ROPE_THETA = 10000.0
# The turn markers of the baichuan2 template (generation_config.json's user_token_id 195 and
# assistant_token_id 196): SentencePiece user-defined pieces, made special tokens of the fast
# tokenizer so that a reply decoded with skip_special_tokens drops a generated marker.
TURN_TOKENS = ("<reserved_106>", "<reserved_107>")


def official_setting(official: dict[str, Any], key: str) -> Any:
    return official.get(key, DEFAULTS[key])


def check_convertible(official: dict[str, Any]) -> None:
    """Refuse what the Llama layout cannot hold, before any weight is read."""
    if "max_position_embeddings" not in official and "model_max_length" in official:
        # The 13B configuration classes have model_max_length and no max_position_embeddings
        # (their attention is ALiBi, sized by model_max_length); the 7B (rotary) ones have it.
        raise SdkError(
            "This Baichuan checkpoint is a 13B model (its config.json has model_max_length "
            "and no max_position_embeddings): Baichuan-13B and Baichuan2-13B use ALiBi "
            "attention, which transformers has no native architecture for, and their remote "
            "code is not supported. Use baichuan2-7b-chat (Baichuan2-7B-Chat).")
    if official.get("quantization_config"):
        raise SdkError(
            "This Baichuan checkpoint is stored quantized (config.json has a "
            "quantization_config: Baichuan's own bitsandbytes 4-bit files), which cannot be "
            "converted. Use the unquantized baichuan2-7b-chat with --quantization-bit 4: the "
            "same model, quantized on load.")


def native_config(official: dict[str, Any]) -> dict[str, Any]:
    """The LlamaConfig of an official Baichuan(2)-7B config.json (the first step of the
    conversion: every refusal comes before a weight is read)."""
    check_convertible(official)
    require_protobuf("Baichuan")
    heads = official_setting(official, "num_attention_heads")
    hidden = official_setting(official, "hidden_size")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": official_setting(official, "vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": official_setting(official, "intermediate_size"),
        "num_hidden_layers": official_setting(official, "num_hidden_layers"),
        "num_attention_heads": heads,
        "num_key_value_heads": heads,  # W_pack holds full-size k and v: no grouping
        "head_dim": hidden // heads,
        "hidden_act": official_setting(official, "hidden_act"),
        # The official rotary cache grows past max_position_embeddings on demand, as Llama's
        # rotary embedding does; the window recorded is the one the model was trained for
        # (model_max_length, which build_chat_input truncates to; both 4,096 in the official
        # Baichuan2-7B config).
        "max_position_embeddings": official.get("model_max_length",
                                                official_setting(official,
                                                                 "max_position_embeddings")),
        "initializer_range": official_setting(official, "initializer_range"),
        "rms_norm_eps": official_setting(official, "rms_norm_eps"),
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "use_cache": True,
        "pad_token_id": official_setting(official, "pad_token_id"),
        "bos_token_id": official_setting(official, "bos_token_id"),
        "eos_token_id": official_setting(official, "eos_token_id"),
    }
    if "torch_dtype" in official:
        config["dtype"] = official["torch_dtype"]
    # Not carried over: z_loss_weight, a training-loss term of the official forward (0 by
    # default in BaichuanConfig and absent from Baichuan2-7B-Chat's config.json), which a
    # native model does not add.
    return config


def native_tensors(name: str, tensor: Any, official: dict[str, Any]) -> Tensors:
    """The Llama weights one official weight becomes."""
    if ".rotary_emb." in name:
        return []  # recomputed by Llama's rotary embedding (the official code keeps none)
    if name.endswith(".self_attn.W_pack.weight"):
        prefix = name[: -len("W_pack.weight")]
        query, key, value = tensor.chunk(3, dim=0)  # rows [q; k; v], hidden_size each
        return [(f"{prefix}q_proj.weight", query), (f"{prefix}k_proj.weight", key),
                (f"{prefix}v_proj.weight", value)]
    if name == "lm_head.weight" and official_setting(official, "vocab_size") == \
            BAICHUAN2_VOCAB_SIZE:
        # NormHead.forward: F.normalize(weight) (each row to unit L2 norm), in every training
        # forward and once, in place, at inference. Written normalised, the plain Linear of
        # Llama gives the same logits; exact for inference and for every tuner that leaves
        # lm_head frozen. Full fine-tuning (--sft-type full) trains the normalised rows
        # directly, where the official code trains the raw parameter through the
        # normalisation (its gradient projected onto the unit sphere's tangent).
        import torch

        normalised = torch.nn.functional.normalize(tensor.float(), dim=-1)
        return [(name, normalised.to(tensor.dtype))]
    if name.endswith((".weight.data", ".weight.quant_state")):
        raise SdkError(f"{name} is a bitsandbytes 4-bit weight of Baichuan's own format; "
                       "use the unquantized checkpoint with --quantization-bit 4.")
    return [(name, tensor)]


def special_token(settings: dict[str, Any], key: str, default: str | None) -> str | None:
    """A special token of tokenizer_config.json: a string or an AddedToken dict."""
    value = settings.get(key, default)
    return value.get("content") if isinstance(value, dict) else value


def write_tokenizer(source: Path, destination: Path) -> None:
    """A fast tokenizer with BaichuanTokenizer's ids: the SentencePiece model converted as
    it is (byte fallback, split digits, user-defined pieces kept whole, no dummy prefix), and
    its bos/eos/unk/pad and add_bos/add_eos from tokenizer_config.json (BaichuanTokenizer's
    defaults where a key is missing)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    backend, vocab = sentencepiece_tokenizer(read_sentencepiece(source, "Baichuan"))
    file = source / "tokenizer_config.json"
    settings = read_json(file) if file.is_file() else {}
    bos = special_token(settings, "bos_token", "<s>")
    eos = special_token(settings, "eos_token", "</s>")
    # BaichuanTokenizer's defaults: add_bos_token True, add_eos_token False (Baichuan2's
    # tokenizer_config.json sets both False).
    add_bos, add_eos = settings.get("add_bos_token", True), settings.get("add_eos_token", False)
    if add_bos or add_eos:
        single = " ".join([*([f"{bos}:0"] if add_bos else []), "$A:0",
                           *([f"{eos}:0"] if add_eos else [])])
        pair = " ".join([*([f"{bos}:0"] if add_bos else []), "$A:0",
                         *([f"{eos}:0"] if add_eos else []),
                         *([f"{bos}:1"] if add_bos else []), "$B:1",
                         *([f"{eos}:1"] if add_eos else [])])
        backend.post_processor = processors.TemplateProcessing(
            single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in {bos, eos}])
    # Special tokens match anywhere in the text (tokenizer_config.json marks eos and pad
    # single_word, which would keep "reply</s>" from being split at </s>; the chat template
    # writes </s> right after the reply, as the token that ends it).
    names = [token for token in [
        bos, eos, special_token(settings, "unk_token", "<unk>"),
        special_token(settings, "pad_token", None), *TURN_TOKENS] if token]
    add_special_pieces(backend, vocab, names, source, "it is not Baichuan2's tokenizer")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=bos, eos_token=eos,
        unk_token=special_token(settings, "unk_token", "<unk>"),
        pad_token=special_token(settings, "pad_token", None),
        additional_special_tokens=list(TURN_TOKENS),
        model_max_length=settings.get("model_max_length", 4096),
        clean_up_tokenization_spaces=False)
    tokenizer.save_pretrained(str(destination))


def generation_config(official: dict[str, Any], source: Path) -> dict[str, Any]:
    """The official generation_config.json's decoding defaults; its user_token_id and
    assistant_token_id (195 / 196) are the baichuan2 template's turn markers."""
    file = source / "generation_config.json"
    settings = read_json(file) if file.is_file() else {}
    kept = ("max_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty",
            "do_sample")
    return {"bos_token_id": official_setting(official, "bos_token_id"),
            "eos_token_id": official_setting(official, "eos_token_id"),
            "pad_token_id": official_setting(official, "pad_token_id"),
            **{key: settings[key] for key in kept if key in settings}}


CONVERSION = Conversion(layout="llama", version=1, config=native_config, tensors=native_tensors,
                        tokenizer=write_tokenizer, generation=generation_config)


def load(spec: Any, options: Any) -> tuple[Any, Any]:
    """The model type's loader: the Llama copy of the official checkpoint."""
    return load_native(spec, options, CONVERSION)


def load_tokenizer(spec: Any, options: Any) -> Any:
    return native_tokenizer(spec, options, CONVERSION)

