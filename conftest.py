"""Shared test fixtures (for tests/ and plugins/*/tests): a tiny random model with a real
tokenizer, and mock plugins that register it."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sdk.cli import cli

REPO = Path(__file__).resolve().parent
SHARED = REPO.parent / "shared"
TOKENIZERS = SHARED / "data" / "tokenizers"
TINY_MODEL_TYPE = "tiny-qwen2-chat"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and the real Qwen2 tokenizer (ChatML tokens)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_plugin_file(tiny_model_dir, tmp_path_factory) -> Path:
    """A plugin file, as a third party would write it, registering the tiny model type."""
    path = tmp_path_factory.mktemp("plugins") / "tiny_plugin.py"
    path.write_text(textwrap.dedent(f"""
        from sdk import hookimpl
        from sdk.specs import ModelSpec

        def load(spec, options):
            from sdk.models.loader import load_pretrained
            return load_pretrained(options.model_dir or {str(tiny_model_dir)!r}, options)

        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type={TINY_MODEL_TYPE!r}, family="tiny",
                               template="chatml", loader=load))
    """))
    return path


@pytest.fixture
def plugin_set(tiny_plugin_file):
    """Built-ins, installed plugins and the tiny model plugin, as `sdk --plugin` loads them."""
    from sdk.plugins import load_plugins

    return load_plugins([str(tiny_plugin_file)])


@pytest.fixture
def run_cli():
    """Run `sdk ARGS...` in-process; returns the click Result (stdout and stderr apart)."""
    runner = CliRunner()

    def run(*args: str, input: str | None = None):
        return runner.invoke(cli, [str(a) for a in args], input=input, prog_name="sdk",
                             catch_exceptions=False)

    return run


@pytest.fixture
def identity_data(tmp_path) -> Path:
    """A small messages-format dataset: the same identity answer in several phrasings."""
    path = tmp_path / "identity.jsonl"
    questions = ["Who are you?", "What is your name?", "Introduce yourself.", "Your name?"]
    with path.open("w", encoding="utf-8") as handle:
        for question in questions:
            handle.write(json.dumps({"messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": "I am Tiny, made by the tests."},
            ]}) + "\n")
    return path
