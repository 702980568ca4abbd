"""`sdk export --to gguf`: the file read back by transformers' own GGUF loader (a reader we did
not write) gives the merged model's logits, the tokenizer's ids and the chat template that
`sdk template render` renders, for a tiny model of each architecture the writer lays out."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import CONVERSATIONS, TOKENIZER_CORPUS, TOKENIZERS, save_tiny_model
from sdk.config import ExportArguments
from sdk.export import save_gguf
from sdk.templates.builtin import CHATML
from sdk.templates.engine import Template

# transformers' GGUF reader parses every token and merge in Python, three times per load (about
# 10 s for Qwen2's 151k tokens on an idle core): the tiny models keep the first tokens only.
SMALL_VOCAB = 2000
KEPT_ADDED = 16


def small_tokenizer(name: str, folder: Path) -> Path:
    """The tokenizer of TOKENIZERS/name cut to its first SMALL_VOCAB tokens, the merges among
    them and its first KEPT_ADDED added tokens (renumbered after them): the same kind of
    tokenizer, with the same pre-tokenizer and special tokens, that loads in a blink."""
    source = TOKENIZERS / name
    described = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    model = described["model"]
    vocab = {token: index for token, index in model["vocab"].items() if index < SMALL_VOCAB}
    model["vocab"] = vocab
    model["merges"] = [merge for merge in model["merges"]
                       if all(part in vocab for part in merge) and "".join(merge) in vocab]
    added = [token for token in described["added_tokens"] if token["id"] >= SMALL_VOCAB]
    for offset, token in enumerate(added[:KEPT_ADDED]):
        token["id"] = SMALL_VOCAB + offset
    described["added_tokens"] = [token for token in described["added_tokens"]
                                 if token["id"] < SMALL_VOCAB + KEPT_ADDED
                                 and token not in added[KEPT_ADDED:]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(described), encoding="utf-8")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("added_tokens_decoder", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def reread(folder: Path, name: str):
    """The model and tokenizer as transformers' GGUF loader reads ``folder/name``."""
    return (AutoModelForCausalLM.from_pretrained(folder, gguf_file=name),
            AutoTokenizer.from_pretrained(folder, gguf_file=name))


# architecture -> (model and config classes, tokenizer, config settings beyond TINY_SIZE).
# Gemma's tokenizer is not redistributable: Llama 2's stands in, whose ids the reader's Gemma
# tokenizer (no prefix space, chosen by architecture) is not meant to give.
OTHER_TOKENIZER = {"gemma2"}
ARCHITECTURES = {
    "llama": ("Llama", "qwen2", {"tie_word_embeddings": True}),
    "llama-3": ("Llama", "llama3", {"tie_word_embeddings": False}),
    "mistral": ("Mistral", "mistral-v0.1", {"sliding_window": None}),
    "qwen2": ("Qwen2", "qwen2", {"tie_word_embeddings": False}),
    # transformers' reader takes Qwen3's head size from its config's default, 128
    "qwen3": ("Qwen3", "qwen2", {"head_dim": 128}),
    "gemma2": ("Gemma2", "llama2", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                    "sliding_window": 64}),
}


def tiny_model(architecture: str, folder: Path):
    import transformers

    prefix, tokenizer_name, settings = ARCHITECTURES[architecture]
    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer(tokenizer_name, folder / "tok"))
    save_tiny_model(getattr(transformers, f"{prefix}ForCausalLM"),
                    getattr(transformers, f"{prefix}Config"), tokenizer, folder / "model",
                    **settings)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():  # norms away from 1, biases away from 0: a misplaced one shows
        for value in model.parameters():
            if value.ndim == 1:
                value.add_(torch.randn_like(value) * 0.1)
    return model.eval(), tokenizer


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_each_architecture_reads_back_with_the_same_logits_ids_and_template(architecture,
                                                                            tmp_path):
    model, tokenizer = tiny_model(architecture, tmp_path)
    template = Template.for_tokenizer(CHATML, tokenizer)
    path = save_gguf(tmp_path, model, tokenizer, template,
                     ExportArguments(to="gguf", gguf_type="f16"), "tiny")
    assert path.name == "tiny-f16.gguf" and not (tmp_path / ".tokenizer").exists()
    read, read_tokenizer = reread(tmp_path, path.name)

    ids = tokenizer(TOKENIZER_CORPUS[1] + TOKENIZER_CORPUS[12], return_tensors="pt").input_ids
    expected = logits(model, ids)
    # f16 weights (Gemma's norms stored as 1 + w): within bf16's tolerance of the fp32 model
    torch.testing.assert_close(logits(read, ids), expected, rtol=1.6e-2,
                               atol=2e-2 * expected.abs().max().item())
    for text in TOKENIZER_CORPUS if architecture not in OTHER_TOKENIZER else ():
        assert read_tokenizer(text).input_ids == tokenizer(text).input_ids, text
    for messages in CONVERSATIONS.values():
        for prompt in (False, True):
            assert read_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            ) == template.render(messages, prompt)
