"""Loader of the remote-code ChatGLM2/3 and GLM-4 checkpoints: the generic loader, then the
tokenizer set up so that the special tokens written in a rendered chat text ([gMASK], sop,
<|user|>, ...) encode to their own ids, since sft-sdk tokenizes the whole rendered text."""

from __future__ import annotations

from typing import Any


def prepare_tokenizer(tokenizer: Any) -> Any:
    # ChatGLM3's tokenization_chatglm.py recognises its special tokens in text ("for
    # apply_chat_template", SPTokenizer.role_special_token_expression) only with
    # encode_special_tokens=True; init_kwargs keeps the setting in saved checkpoints.
    if hasattr(tokenizer, "encode_special_tokens"):
        tokenizer.encode_special_tokens = True
        if isinstance(getattr(tokenizer, "init_kwargs", None), dict):
            tokenizer.init_kwargs["encode_special_tokens"] = True
    # GLM-4's remote tokenizer: when "<|user|>" does not encode to one token, register its
    # special tokens, as ms-swift does (swift/model/models/glm.py, ChatGLM4Loader).
    special = getattr(tokenizer, "special_tokens", None)
    if (isinstance(special, dict) and "<|user|>" in special
            and len(tokenizer.encode("<|user|>", add_special_tokens=False)) > 1):
        tokenizer.add_tokens(list(special))
    return tokenizer


def load(spec: Any, options: Any) -> tuple[Any, Any]:
    from sdk.models.loader import load_from_hub

    model, tokenizer = load_from_hub(spec, options)
    return model, prepare_tokenizer(tokenizer)
