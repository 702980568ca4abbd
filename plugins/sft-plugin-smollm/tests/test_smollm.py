"""SmolLM2 plugin: the template equals the GGUF's own chat template; a real fine-tune runs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from sft_plugin_smollm import MODEL_TYPE, SMOLLM2_TEMPLATE, gguf_path

from conftest import CONVERSATIONS as STANDARD
from conftest import trained_text
from sdk.plugins import load_plugins
from sdk.templates.engine import Template

SDK = str(Path(sys.executable).with_name("sdk"))
CONVERSATIONS = {
    **{name: STANDARD[name] for name in ("single turn", "with system", "multi turn", "chinese")},
    "empty system": [{"role": "system", "content": ""},
                     {"role": "user", "content": "x"}],
}


@pytest.fixture(scope="module")
def gguf_tokenizer():
    from transformers import AutoTokenizer

    path = gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def test_the_model_type_is_registered_with_its_template():
    registry = load_plugins().registry
    assert registry.get("models", MODEL_TYPE).template == "smollm2"
    assert registry.get("templates", "smollm2") == SMOLLM2_TEMPLATE


@pytest.mark.parametrize("name", CONVERSATIONS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_template_render_equals_the_gguf_chat_template(render_cli, gguf_tokenizer, name,
                                                       generation_prompt):
    expected = gguf_tokenizer.apply_chat_template(
        CONVERSATIONS[name], tokenize=False, add_generation_prompt=generation_prompt)
    assert render_cli(MODEL_TYPE, CONVERSATIONS[name], generation_prompt) == expected


@pytest.mark.parametrize("name", ["multi turn", "chinese"])
def test_training_ids_equal_the_tokenizers_ids(gguf_tokenizer, name):
    messages = CONVERSATIONS[name]
    input_ids, labels = Template(SMOLLM2_TEMPLATE).encode(gguf_tokenizer, messages)
    expected = gguf_tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True)
    assert input_ids == list(expected["input_ids"])
    trained = trained_text(gguf_tokenizer, input_ids, labels)
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert trained == "".join(replies)


@pytest.mark.slow
def test_fine_tune_and_chat_with_the_real_model(tmp_path):
    """`sdk sft` then `sdk infer --ckpt-dir` as a user runs them, on the real SmolLM2."""
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    train = subprocess.run(
        [SDK, "sft", "--model-type", MODEL_TYPE, "--dataset", "self-cognition",
         "--model-name", "Ferret", "--model-author", "the tests", "--max-steps", "2",
         "--batch-size", "2", "--gradient-accumulation-steps", "1", "--output-dir",
         str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    [run_dir] = (tmp_path / MODEL_TYPE).glob("v*")
    assert (run_dir / "checkpoint-2" / "adapter_model.safetensors").is_file()
    chat = subprocess.run([SDK, "infer", "--ckpt-dir", str(run_dir), "--query", "Who are you?",
                           "--max-new-tokens", "16"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert chat.returncode == 0, chat.stderr[-3000:]
    assert len(chat.stdout.split()) >= 3  # a real model answers in words
