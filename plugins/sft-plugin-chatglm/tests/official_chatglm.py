"""The official ChatGLM2/ChatGLM3 code (shared/data/remote_code), run under transformers 5 with
the fewest patches that let it run at all: the reference that the native conversion is
compared with. Test support, not collected (no test_ prefix).

Each patch says what transformers 5 broke; nothing here changes what the official code
computes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import REMOTE_CODE, official_module, randomize, save_official_checkpoint

# Tiny sizes in the official config keys; vocabulary, tokenizer and everything else stay the
# official ones. 2 multi-query groups of 2 heads each, 16 channels per head.
TINY = dict(hidden_size=64, num_attention_heads=4, kv_channels=16, multi_query_group_num=2,
            num_layers=2, ffn_hidden_size=128)


def official_tokenizer(folder: Path) -> Any:
    """The official ChatGLMTokenizer of ``folder``."""
    module = official_module(folder, "tokenization_chatglm")
    tokenizer_class = module.ChatGLMTokenizer
    if not getattr(tokenizer_class, "_patched_for_transformers_5", False):
        pad = tokenizer_class._pad

        # transformers 5 calls _pad(..., padding_side=...) even when nothing is padded; the
        # official _pad has no such parameter (it pads on the left, always).
        def _pad(self, encoded_inputs, max_length=None, padding_strategy=None,
                 pad_to_multiple_of=None, padding_side=None, return_attention_mask=None):
            return pad(self, encoded_inputs, max_length, padding_strategy, pad_to_multiple_of,
                       return_attention_mask)

        tokenizer_class._pad = _pad
        # transformers 5 removed batch_encode_plus (build_chat_input calls it); __call__ takes
        # the same batch of id lists.
        tokenizer_class.batch_encode_plus = tokenizer_class.__call__
        tokenizer_class._patched_for_transformers_5 = True
    return tokenizer_class.from_pretrained(str(folder))


def generation(folder: Path) -> int:
    """2 or 3: ChatGLM3's tokenizer builds its role-token chat input, ChatGLM2's does not."""
    return 3 if hasattr(official_module(folder, "tokenization_chatglm").ChatGLMTokenizer,
                        "build_chat_input") else 2


def tiny_official_checkpoint(source: str, destination: Path, weights: str = "model.safetensors",
                             **settings: Any) -> Path:
    """A tiny random checkpoint in the official layout of ``REMOTE_CODE / source``: its code,
    real tokenizer and config.json with TINY sizes and ``settings`` (official keys), seeded
    random weights under the official names, stored in float16 as the official ones are."""
    import torch

    config = json.loads((REMOTE_CODE / source / "config.json").read_text(encoding="utf-8"))
    config.update(TINY, **settings)
    modeling = official_module(REMOTE_CODE / source, "modeling_chatglm")
    model = build(modeling, official_module(REMOTE_CODE / source, "configuration_chatglm")
                  .ChatGLMConfig(**config))
    randomize(model)  # ChatGLM's RMSNorm weights are torch.empty and _init_weights a no-op
    return save_official_checkpoint(REMOTE_CODE / source, destination, config,
                                    model.to(torch.float16), weights=weights)


def official_model(folder: Path) -> Any:
    """The official model of the checkpoint ``folder``, built by its own code and given its
    weights, in float32."""
    import torch

    config = official_module(folder, "configuration_chatglm").ChatGLMConfig.from_pretrained(
        str(folder))
    model = build(official_module(folder, "modeling_chatglm"), config)
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors.torch import load_file

        state = {name: t for file in files for name, t in load_file(str(file)).items()}
    else:
        state = {name: t for file in sorted(folder.glob("pytorch_model*.bin"))
                 for name, t in torch.load(file, weights_only=True).items()}
    model.load_state_dict(state, strict=True)
    rope_ratio = getattr(config, "rope_ratio", 1)
    if rope_ratio != 1:
        scale_rotary(model.transformer.rotary_pos_emb, rope_ratio, generation(folder))
    return model.eval()


def build(modeling: Any, config: Any) -> Any:
    """The official ChatGLMForConditionalGeneration for ``config``, in float32."""
    import torch

    config.torch_dtype = torch.float32  # the layers are built in config.torch_dtype
    # transformers 5 drops use_cache from a config's keyword arguments; forward reads it.
    config.use_cache = True
    # transformers 5's generate() sizes its (unused here) cache by this name.
    config.num_hidden_layers = config.num_layers
    # transformers 5 configs no longer carry generation defaults; __init__ stores max_length
    # (unused elsewhere), and generate() refuses a config that sets it: set for __init__ only.
    config.max_length = config.seq_length
    # empty_init=False: built with values (torch's own init) rather than skip_init's empty
    # memory; the checkpoint's weights, or randomize(), replace them
    model = official_class(modeling)(config, empty_init=False)
    del config.max_length
    return model


def official_class(modeling: Any) -> type:
    """ChatGLMForConditionalGeneration with generate() under transformers 5."""
    import torch
    from transformers import GenerationMixin

    if hasattr(modeling, "OfficialForTransformers5"):
        return modeling.OfficialForTransformers5
    base = modeling.ChatGLMForConditionalGeneration

    class OfficialForTransformers5(base, GenerationMixin):
        """transformers 5's PreTrainedModel no longer inherits GenerationMixin; its generate()
        keeps its own cache under the "cache" key, calls the hooks with new signatures and
        passes no attention mask when it is all ones. The two hooks below are the official
        ones (transformers 4) with those names: the official tuple cache carried between
        steps, the last token and its position fed with it."""

        def prepare_inputs_for_generation(self, input_ids, attention_mask=None,
                                          official_cache=None, **kwargs):
            position_ids = self.get_position_ids(input_ids, device=input_ids.device)
            if official_cache is not None:
                position_ids = position_ids[..., -1:]
                input_ids = input_ids[:, -1:]
            return {"input_ids": input_ids, "past_key_values": official_cache,
                    "position_ids": position_ids, "attention_mask": attention_mask,
                    "return_last_logit": True, "use_cache": True}

        def _update_model_kwargs_for_generation(self, outputs, model_kwargs,
                                                is_encoder_decoder=False, num_new_tokens=1):
            model_kwargs["official_cache"] = outputs.past_key_values
            mask = model_kwargs.get("attention_mask")
            if mask is not None:
                model_kwargs["attention_mask"] = torch.cat(
                    [mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
            return model_kwargs

    modeling.OfficialForTransformers5 = OfficialForTransformers5
    return OfficialForTransformers5


def scale_rotary(rotary: Any, rope_ratio: float, version: int) -> None:
    """The rotary table of the 32K releases, whose modeling files read config.rope_ratio (the
    files here predate it). ChatGLM3-6B-32K (and later ChatGLM3-6B revisions):
    ``base = base * self.rope_ratio`` in forward_impl, which these files' forward_impl takes as
    its ``base`` argument. ChatGLM2-6B-32K: ``seq_idx = torch.arange(seq_len, dtype=dtype) /
    self.rope_ratio`` (positions interpolated), otherwise ChatGLM2-6B's forward_impl; both
    lines as in the official files (mirrored in hzg0601/cn-llm-codes chatglm2-6b-32k/
    modeling_chatglm.py and in the chatglm3 files of many GitHub copies)."""
    import types

    import torch

    def chatglm3(self, max_seq_len, offset=0):
        return self.forward_impl(max_seq_len, self.dim, dtype=self.inv_freq.dtype,
                                 device=self.inv_freq.device, base=10000 * rope_ratio)

    def chatglm2(self, max_seq_len, offset=0):
        dtype, device, n_elem = self.inv_freq.dtype, self.inv_freq.device, self.dim
        theta = 1.0 / (10000 ** (torch.arange(0, n_elem, 2, dtype=dtype, device=device)
                                 / n_elem))
        seq_idx = torch.arange(max_seq_len, dtype=dtype, device=device) / rope_ratio
        idx_theta = torch.outer(seq_idx, theta).float()
        cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)
        if dtype in (torch.float16, torch.bfloat16, torch.int8):
            cache = cache.bfloat16() if dtype == torch.bfloat16 else cache.half()
        return cache

    rotary.forward = types.MethodType(chatglm3 if version == 3 else chatglm2, rotary)


# The official chat formats, built by the official tokenizer's own functions from a
# conversation in the sdk's messages form.

def rounds(messages: list[dict]) -> tuple[str, list[tuple[str, str]], str, str | None]:
    """(system text, past (query, response) rounds, last query, its reply or None)."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns = [m["content"] for m in messages if m["role"] != "system"]
    reply = turns.pop() if messages[-1]["role"] == "assistant" else None
    return system, list(zip(turns[:-1:2], turns[1:-1:2], strict=True)), turns[-1], reply


def chatglm2_ids(tokenizer: Any, messages: list[dict]) -> tuple[list[int], list[int] | None]:
    """ChatGLM2's ids: with a final reply, (input_ids, labels) as ChatGLM2-6B ptuning/main.py
    (preprocess_function_train, the system text as its source prefix) builds them; without,
    (the prompt of chat(): tokenizer([build_prompt(query, history)]), None)."""
    system, history, query, reply = rounds(messages)
    prompt = tokenizer.encode(system + tokenizer.build_prompt(query, history),
                              add_special_tokens=True)
    if reply is None:
        return prompt, None
    answer = tokenizer.encode(reply, add_special_tokens=False)
    eos = [tokenizer.eos_token_id]
    return prompt + answer + eos, [-100] * len(prompt) + answer + eos


def chatglm3_ids(tokenizer: Any, messages: list[dict]) -> list[int]:
    """ChatGLM3's ids: build_chat_input(query, history) for a prompt (as chat() calls it);
    a conversation with a final reply is [gMASK] sop and build_single_message of each message,
    ended by <|user|> (the sdk's end-of-turn marker, see the plugin's END_OF_TURN)."""
    if messages[-1]["role"] == "user":
        history = [dict(m) for m in messages[:-1]]
        inputs = tokenizer.build_chat_input(messages[-1]["content"], history=history)
        return inputs["input_ids"][0].tolist()
    ids = tokenizer.get_prefix_tokens()
    for message in messages:
        ids += tokenizer.build_single_message(message["role"], "", message["content"])
    return ids + [tokenizer.get_command("<|user|>")]
