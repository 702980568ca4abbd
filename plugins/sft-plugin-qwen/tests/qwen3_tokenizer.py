"""Test-only: the Qwen3 tokenizer, built offline from the shared Qwen2 tokenizer.

Qwen3's vocab.json and merges.txt (Qwen/Qwen3-1.7B and Qwen/Qwen3-4B-Instruct-2507, mirrored in
nam2350/consultai at 91f6881f) are exactly the Qwen2 tokenizer's 151,643 BPE tokens and 151,387
merges; Qwen3 differs only in its added tokens (tokenizer_config.json added_tokens_decoder,
below: 151643-151668, <think> 151667 and </think> 151668 among them) where the shared file has
unnamed [PAD...] placeholders. Checked once against those real files: the same ids for
ChatML/think/tool text, Chinese and code.
"""

from __future__ import annotations

import json
from pathlib import Path

# id -> (content, special), Qwen3's added_tokens_decoder in order from 151643.
ADDED = [
    ("<|endoftext|>", True), ("<|im_start|>", True), ("<|im_end|>", True),
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False),
    ("</tool_call>", False), ("<|fim_prefix|>", False), ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False), ("<|fim_pad|>", False), ("<|repo_name|>", False),
    ("<|file_sep|>", False), ("<tool_response>", False), ("</tool_response>", False),
    ("<think>", False), ("</think>", False),
]
FIRST_ADDED = 151643


def save_qwen3_tokenizer(qwen2_folder: Path, folder: Path, chat_template: str) -> Path:
    """Write Qwen3's tokenizer.json and tokenizer_config.json into ``folder``."""
    tokenizer = json.loads((qwen2_folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = tokenizer["model"]["vocab"]
    for name in [name for name, index in vocab.items() if index >= FIRST_ADDED]:
        del vocab[name]
    tokenizer["added_tokens"] = [
        {"id": FIRST_ADDED + offset, "content": content, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": special}
        for offset, (content, special) in enumerate(ADDED)]
    for token in tokenizer["added_tokens"]:
        vocab[token["content"]] = token["id"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False),
                                           encoding="utf-8")
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
              "pad_token": "<|endoftext|>", "unk_token": None, "add_prefix_space": False,
              "clean_up_tokenization_spaces": False, "errors": "replace",
              "split_special_tokens": False, "model_max_length": 131072,
              "additional_special_tokens": [c for c, special in ADDED[1:] if special],
              "chat_template": chat_template}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
