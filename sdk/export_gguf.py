"""`sdk export --to gguf`: a merged model as one GGUF file, the format llama.cpp, Ollama and
LM Studio run, written with the `gguf` package (the llama.cpp project's own writer, tensor-name
maps and numpy quantizers).

Only the architectures whose GGUF layout gguf's constants define and whose graph llama.cpp
builds from the same tensors are written (``LAYOUTS``); any other model, a tensor with no place
in the layout, or rotary scaling llama.cpp cannot express is refused with the reason. The
metadata holds the hyper-parameters, the rotary settings (with ``--rope-scaling``'s), the
tokenizer (tokens, types, merges, scores, special ids, add_bos) and as ``tokenizer.chat_template``
the template the model was trained with, as ``sdk export`` writes it for transformers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdk.errors import SdkError


@dataclass(frozen=True)
class Layout:
    """How a transformers architecture is laid out in GGUF."""

    arch: str  # gguf's MODEL_ARCH name
    # llama.cpp's llama graph rotates interleaved pairs, transformers rotates halves: llama.cpp's
    # converter permutes the rows of q and k to match (transformers' reader undoes it).
    permute_qk: bool = False
    norm_offset: float = 0.0  # Gemma scales by 1 + weight; GGUF stores 1 + weight
    key_length: bool = False  # the graph reads the head size from attention.key_length


# config.model_type -> layout. Each is read back by transformers' GGUF loader in the tests.
LAYOUTS = {
    "llama": Layout("llama", permute_qk=True),
    "mistral": Layout("llama", permute_qk=True),
    "qwen2": Layout("qwen2"),
    "qwen3": Layout("qwen3", key_length=True),
    "gemma2": Layout("gemma2", norm_offset=1.0, key_length=True),
    "gemma3_text": Layout("gemma3", norm_offset=1.0, key_length=True),  # q/k norms too
    "phi3": Layout("phi3"),  # q/k/v and gate/up fused as in gguf's attn_qkv and ffn_up
}
# --rope-scaling kinds (transformers' rope_type) -> gguf's RopeScalingType member.
ROPE_TYPES = {"linear": "LINEAR", "yarn": "YARN"}  # and llama3: see llama3_freq_factors


def check_model_types(model_types: tuple[str, ...], what: str) -> None:
    """Refuse, before any weight loads, a model type none of whose architectures GGUF holds."""
    if model_types and not set(model_types) & set(LAYOUTS):
        raise SdkError(f"--to gguf: {what} is a {'/'.join(model_types)} model, which the GGUF "
                       f"writer cannot lay out (it writes {', '.join(sorted(LAYOUTS))}). "
                       "Export it without --to gguf (safetensors) instead.")


def check_spec(spec: Any) -> None:
    """:func:`check_model_types` for a registered model type (what its loader converts to, or
    the architectures of its checkpoints)."""
    check_model_types((spec.converted_to,) if spec.converted_to else spec.config_model_types,
                      f"model type '{spec.model_type}'")


def layout_of(config: Any) -> Layout:
    layout = LAYOUTS.get(config.model_type)
    if layout is None:
        check_model_types((config.model_type,), "the model")
    return layout


def rope_metadata(config: Any) -> dict[str, Any]:
    """The rotary settings as gguf keys: base frequency, and the scaling of --rope-scaling
    (linear, yarn, Llama 3.1's llama3 as per-frequency factors); others are refused."""
    import gguf

    from sdk.models.rope import context_window

    rope = getattr(config, "rope_parameters", None) or {}
    if "full_attention" in rope:  # Gemma 3's global layers (check_gemma3: the local ones)
        rope = rope["full_attention"]
    kind = rope.get("rope_type", "default")
    settings: dict[str, Any] = {"freq_base": float(rope.get("rope_theta", 10000.0))}
    if kind == "default":
        return settings
    if kind == "llama3":
        settings.update(freq_factors=llama3_freq_factors(config),
                        context_length=context_window(config))
        return settings
    if kind not in ROPE_TYPES:
        raise SdkError(f"--to gguf: the model scales its rotary positions '{kind}'-wise, which "
                       f"the GGUF writer does not express (it writes "
                       f"{', '.join(ROPE_TYPES)}, llama3; llama.cpp has no dynamic scaling). "
                       "Train without that --rope-scaling, or export without --to gguf.")
    settings.update(scaling_type=getattr(gguf.RopeScalingType, ROPE_TYPES[kind]),
                    scaling_factor=float(rope["factor"]),
                    context_length=context_window(config))
    if kind == "yarn":
        settings["original_context"] = int(rope.get("original_max_position_embeddings")
                                           or config.max_position_embeddings)
    return settings


# llama.cpp's Gemma 3 graph fixes what the file cannot say: every sixth layer attends to all
# tokens, the others to a sliding window rotated with base 10000 and no scaling; queries are
# scaled by the head size (27B's 62 layers: by hidden size / heads).
GEMMA3_GLOBAL_EVERY = 6
GEMMA3_LOCAL_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
GEMMA3_27B_LAYERS = 62


def check_gemma3(config: Any, head_dim: int) -> None:
    """Refuse a Gemma 3 model that llama.cpp's fixed Gemma 3 graph would compute otherwise."""
    layers = [("full_attention" if (index + 1) % GEMMA3_GLOBAL_EVERY == 0
               else "sliding_attention") for index in range(config.num_hidden_layers)]
    local = config.rope_parameters["sliding_attention"]
    query_scale = (config.hidden_size // config.num_attention_heads
                   if config.num_hidden_layers == GEMMA3_27B_LAYERS else head_dim)
    if (list(config.layer_types) != layers or config.query_pre_attn_scalar != query_scale
            or {key: local.get(key) for key in GEMMA3_LOCAL_ROPE} != GEMMA3_LOCAL_ROPE):
        raise SdkError("--to gguf: this Gemma 3 model is not built as llama.cpp builds Gemma 3 "
                       f"(a global layer every {GEMMA3_GLOBAL_EVERY}, local rotary base 10000, "
                       "queries scaled by the head size); export without --to gguf.")


def llama3_freq_factors(config: Any) -> Any:
    """Llama 3.1's rotary scaling as llama.cpp takes it: the ``rope_freqs`` tensor, by which
    each default rotary frequency is divided (transformers' own llama3 frequencies over the
    unscaled ones)."""
    import torch
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = config.rope_parameters["rope_theta"]
    default = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    return (default / scaled).numpy()


def permute_rows(weight: Any, heads: int) -> Any:
    """q or k rows from transformers' half-split rotary order to llama.cpp's interleaved one:
    within each head, rows (0..d/2, d/2..d) become (0, d/2, 1, d/2+1, ...)."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def tensor_type(data: Any, gguf_type: str) -> Any:
    """The type a tensor is stored as: f32 for 1-D ones, ``gguf_type`` for the others, f16
    where a row does not split into the quantizer's blocks (as llama.cpp's converter does)."""
    import gguf

    if data.ndim < 2:
        return gguf.GGMLQuantizationType.F32
    chosen = getattr(gguf.GGMLQuantizationType, gguf_type.upper())
    block = gguf.GGML_QUANT_SIZES[chosen][0]
    if data.shape[-1] % block:
        return gguf.GGMLQuantizationType.F16
    return chosen


def gguf_tensors(model: Any, layout: Layout) -> dict[str, Any]:
    """The model's weights as float32 numpy arrays under gguf's tensor names."""
    import gguf
    import torch

    config = model.config
    names = gguf.get_tensor_name_map(gguf_arch(layout), config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    tensors = {}
    for hf_name, value in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue
        stem, _, suffix = hf_name.rpartition(".")
        name = names.get_name(stem)
        if name is None:
            raise SdkError(f"--to gguf: the weight '{hf_name}' has no place in GGUF's "
                           f"{layout.arch} layout; export without --to gguf.")
        data = value.detach().to(torch.float32).cpu().numpy()
        if layout.permute_qk and name.endswith(("attn_q", "attn_k")):
            data = permute_rows(data, heads if name.endswith("attn_q") else kv_heads)
        if layout.norm_offset and name.endswith("norm"):
            data = data + layout.norm_offset
        tensors[f"{name}.{suffix}"] = data
    return tensors


def gguf_arch(layout: Layout) -> Any:
    import gguf

    return next(key for key, value in gguf.MODEL_ARCH_NAMES.items() if value == layout.arch)


def adds_space_prefix(described: dict[str, Any]) -> bool:
    """Whether a SentencePiece-style tokenizer puts "▁" before the text (Llama 2, Mistral do;
    Gemma does not): a Metaspace pre-tokenizer or a Prepend normalizer says so."""
    steps = [described.get("normalizer") or {}, described.get("pre_tokenizer") or {}]
    steps += [step for group in steps for key in ("normalizers", "pretokenizers")
              for step in group.get(key, [])]
    return any(step.get("type") == "Prepend" or (step.get("type") == "Metaspace" and
                                                 step.get("prepend_scheme") != "never")
               for step in steps)


def vocabulary(tokenizer: Any, size: int) -> tuple[str, str, list[str], list[float], list[int]]:
    """The tokenizer as GGUF describes it: its model ("gpt2": byte-level BPE, "llama":
    SentencePiece-style BPE with byte fallback), pre-tokenizer name, and per id (padded to the
    embedding rows ``size``) the token, its score and its type."""
    import gguf

    described = json.loads(tokenizer.backend_tokenizer.to_str())
    model = described["model"]
    if model.get("type") != "BPE":
        raise SdkError(f"--to gguf: the tokenizer is a {model.get('type')} model; the GGUF "
                       "writer takes BPE tokenizers (byte-level or with byte fallback).")
    kind = "llama" if model.get("byte_fallback") else "gpt2"
    tokens = [f"[PAD{index}]" for index in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for token, index in tokenizer.get_vocab().items():
        if index >= size:
            raise SdkError(f"--to gguf: token {token!r} has id {index}, beyond the model's "
                           f"{size} embedding rows.")
        tokens[index] = token
        byte = kind == "llama" and len(token) == 6 and token.startswith("<0x")
        types[index] = gguf.TokenType.BYTE if byte else gguf.TokenType.NORMAL
    for index, added in tokenizer.added_tokens_decoder.items():
        if index < size:
            types[index] = (gguf.TokenType.CONTROL if added.special
                            else gguf.TokenType.USER_DEFINED)
    scores = (sentencepiece_scores(tokenizer, tokens) if kind == "llama" else None) or [
        # SentencePiece ranks pieces by score; a tokenizer.json converted from one keeps that
        # rank as the id order, near enough where the model file is gone
        -float(index) if kind == "llama" else 0.0 for index in range(size)]
    pre = pre_tokenizer(described) if kind == "gpt2" else "default"
    return kind, pre, tokens, scores, [int(token_type) for token_type in types]


def sentencepiece_scores(tokenizer: Any, tokens: list[str]) -> list[float] | None:
    """The scores of the SentencePiece model the tokenizer was converted from, when its file is
    at hand and holds the same pieces: llama.cpp merges by them (as llama.cpp's own converter
    writes them), and the id order differs from them for runs of spaces (Mistral's "▁▁")."""
    from sdk.models.loader import sentencepiece_file

    model_file = sentencepiece_file(tokenizer)
    if model_file is None:
        return None
    import sentencepiece

    model = sentencepiece.SentencePieceProcessor(model_file=str(model_file))
    pieces = model.get_piece_size()
    if [model.id_to_piece(index) for index in range(pieces)] != tokens[:pieces]:
        return None
    return [model.get_score(index) for index in range(pieces)] + [
        -float(index) for index in range(pieces, len(tokens))]


def pre_tokenizer(described: dict[str, Any]) -> str:
    """llama.cpp's name for how a byte-level tokenizer splits text before its merges: the name
    transformers' GGUF reader gives the same splitting rule, "default" (GPT-2's) otherwise."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    steps = described.get("pre_tokenizer") or {}
    patterns = [step.get("pattern", {}).get("Regex")
                for step in steps.get("pretokenizers", [steps]) if step.get("type") == "Split"]
    names = [name for name, split in GGUF_PRE_TOKENIZER_SPLITS.items() if split in patterns]
    return min(names, key=lambda name: name not in PREFERRED_PRE) if names else "default"


# Of the names for one rule, the one llama.cpp's converter writes.
PREFERRED_PRE = ("llama-bpe", "qwen2")


def write_gguf(path: Path, model: Any, tokenizer: Any, tokenizer_folder: Path, gguf_type: str,
               eot_id: int | None, name: str) -> None:
    """Write ``model`` (merged, any dtype) and its tokenizer (saved in ``tokenizer_folder``
    with the chat template) to ``path``."""
    import gguf

    config = model.config
    layout = layout_of(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    if layout.arch == "gemma3":  # refused before any tensor is converted
        check_gemma3(config, head_dim)
    rope = rope_metadata(config)
    tensors = gguf_tensors(model, layout)
    kind, pre, tokens, scores, types = vocabulary(tokenizer, config.vocab_size)
    writer = gguf.GGUFWriter(path, layout.arch)
    writer.add_name(name)
    writer.add_file_type(getattr(gguf.LlamaFileType, f"MOSTLY_{gguf_type.upper()}"))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_context_length(rope.pop("context_length", config.max_position_embeddings))
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    rotary = getattr(config, "partial_rotary_factor", None) or (
        getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    writer.add_rope_dimension_count(int(head_dim * rotary))
    writer.add_vocab_size(config.vocab_size)
    if layout.key_length or head_dim * config.num_attention_heads != config.hidden_size:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_rope_freq_base(rope.pop("freq_base"))
    if "freq_factors" in rope:
        writer.add_tensor("rope_freqs.weight", rope.pop("freq_factors"))
    if rope:
        writer.add_rope_scaling_type(rope["scaling_type"])
        writer.add_rope_scaling_factor(rope["scaling_factor"])
        if "original_context" in rope:
            writer.add_rope_scaling_orig_ctx_len(rope["original_context"])
    if layout.arch == "gemma2":
        writer.add_attn_logit_softcapping(config.attn_logit_softcapping)
        writer.add_final_logit_softcapping(config.final_logit_softcapping)
    if getattr(config, "sliding_window", None) and layout.arch in ("gemma2", "gemma3", "phi3"):
        writer.add_sliding_window(config.sliding_window)
    writer.add_tokenizer_model(kind)
    writer.add_tokenizer_pre(pre)
    if kind == "llama":
        writer.add_add_space_prefix(adds_space_prefix(
            json.loads(tokenizer.backend_tokenizer.to_str())))
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(tokenizer_folder, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)
    if eot_id is not None and eot_id != special.special_token_ids.get("eos"):
        writer.add_eot_token_id(eot_id)
    for tensor_name, data in tensors.items():
        stored = tensor_type(data, gguf_type)
        writer.add_tensor(tensor_name, gguf.quants.quantize(data, stored), raw_dtype=stored)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
