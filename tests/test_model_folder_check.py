"""--model-id-or-path holding a model of another architecture than --model-type is refused
before any weights load (it would train with the wrong chat template and LoRA targets); a
folder or model type that says nothing about its architecture is never refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import save_tiny_model
from sdk.errors import SdkError
from sdk.models.loader import check_model_folder
from sdk.plugins import load_plugins
from sdk.specs import ModelSpec

REGISTRY = load_plugins().registry
# The model_type in config.json of published checkpoints of each family (the remote-code ones
# name their own): zai-org/chatglm3-6b and glm-4-9b-chat, baichuan-inc/Baichuan2-7B-Chat and
# Baichuan-13B-Chat, internlm/internlm-chat-7b and internlm2-chat-7b, Qwen/Qwen-7B-Chat, and
# transformers' own classes for the native ones.
PUBLISHED = {
    "chatglm2-6b": ("chatglm", "ChatGLMModel"),
    "chatglm3-6b": ("chatglm", "ChatGLMModel"),
    "glm4-9b-chat": ("glm", "GlmForCausalLM"),  # it loads Zhipu's native glm-4-9b-chat-hf
    "glm4-9b-chat-hf": ("glm", "GlmForCausalLM"),
    "baichuan-13b-chat": ("baichuan", "BaichuanForCausalLM"),
    "baichuan2-7b-chat": ("baichuan", "BaichuanForCausalLM"),
    "internlm-chat-7b": ("internlm", "InternLMForCausalLM"),
    "internlm2-chat-7b": ("internlm2", "InternLM2ForCausalLM"),
    "internlm2.5-7b-chat": ("internlm2", "InternLM2ForCausalLM"),
    "qwen-7b-chat": ("qwen", "QWenLMHeadModel"),
    "qwen1.5-7b-chat": ("qwen2", "Qwen2ForCausalLM"),
    "qwen2.5-7b-instruct": ("qwen2", "Qwen2ForCausalLM"),
    "llama3.1-8b-instruct": ("llama", "LlamaForCausalLM"),
    "chinese-alpaca-2-7b": ("llama", "LlamaForCausalLM"),
    "mistral-7b-instruct-v0.3": ("mistral", "MistralForCausalLM"),
    "mixtral-8x7b-instruct-v0.1": ("mixtral", "MixtralForCausalLM"),
    "smollm2-135m-instruct": ("llama", "LlamaForCausalLM"),
}


def config_folder(folder: Path, settings: dict) -> Path:
    """A model folder as far as the check reads it: its config.json alone."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(settings))
    return folder


@pytest.fixture(scope="module")
def tiny_qwen2_dir(tiny_model_dir, tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return save_tiny_model(Qwen2ForCausalLM, Qwen2Config, tokenizer,
                           tmp_path_factory.mktemp("tiny-qwen2"), tie_word_embeddings=True)


@pytest.mark.parametrize("model_type", sorted(PUBLISHED))
def test_published_checkpoints_of_each_family_pass(model_type, tmp_path):
    config_type, architecture = PUBLISHED[model_type]
    folder = config_folder(tmp_path / "model", {"model_type": config_type,
                                                "architectures": [architecture]})
    check_model_folder(REGISTRY.get("models", model_type), folder, REGISTRY)


def test_every_first_party_model_type_declares_its_architecture():
    undeclared = [name for name, entry in REGISTRY.entries["models"].items()
                  if entry.plugin.startswith("sft-plugin-") and not entry.spec.config_model_types]
    assert undeclared == []


def test_a_llama_folder_trained_as_qwen2_is_refused_before_anything_loads(
        run_cli, tiny_model_dir, identity_data, tmp_path):
    result = run_cli("sft", "--model-type", "qwen2-7b-instruct", "--model-id-or-path",
                     tiny_model_dir, "--dataset", identity_data, "--output-dir", tmp_path / "out")
    assert result.exit_code == 1
    message = result.stderr
    assert f"--model-id-or-path '{tiny_model_dir}' holds a llama model (LlamaForCausalLM), " \
           "but --model-type qwen2-7b-instruct is a qwen2 model" in message
    # the model types that fit the folder, and where to find them all
    assert "Pick the --model-type of the folder's model (chinese-alpaca-2-13b, " in message
    assert "`sdk models` lists them" in message
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_folder_without_model_type_gets_the_model_types_that_fit_it(
        run_cli, tiny_model_dir, identity_data, tmp_path):
    trained = run_cli("sft", "--model-id-or-path", tiny_model_dir, "--dataset", identity_data,
                      "--output-dir", tmp_path / "out")
    chat = run_cli("infer", "--model-id-or-path", tiny_model_dir)
    for result in (trained, chat):
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert f"'{tiny_model_dir}' holds a llama model; the model types of llama models " \
               "(chinese-alpaca-2-13b, " in result.stderr
    gpt2 = config_folder(tmp_path / "gpt2", {"model_type": "gpt2"})
    result = run_cli("sft", "--model-id-or-path", gpt2, "--dataset", identity_data)
    assert "(no installed one is a gpt2 model: a plugin can add it)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_chatglm_folder_trained_as_baichuan2_is_refused(run_cli, identity_data, tmp_path):
    folder = config_folder(tmp_path / "chatglm3", {
        "model_type": "chatglm", "architectures": ["ChatGLMModel"],
        "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig"}})
    result = run_cli("sft", "--model-type", "baichuan2-7b-chat", "--model-id-or-path", folder,
                     "--trust-remote-code", "--dataset", identity_data, "--output-dir",
                     tmp_path / "out")
    assert result.exit_code == 1
    assert "holds a chatglm model (ChatGLMModel), but --model-type baichuan2-7b-chat is a " \
           "baichuan model" in result.stderr
    assert "(chatglm2-6b, chatglm2-6b-32k, chatglm3-6b, chatglm3-6b-32k, ...)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_infer_and_preview_refuse_a_folder_of_another_architecture(run_cli, tiny_model_dir,
                                                                   identity_data):
    inferred = run_cli("infer", "--model-type", "mistral-7b-instruct-v0.3",
                       "--model-id-or-path", tiny_model_dir, "--query", "hi")
    assert inferred.exit_code == 1
    assert "holds a llama model (LlamaForCausalLM), but --model-type " \
           "mistral-7b-instruct-v0.3 is a mistral model" in inferred.stderr
    previewed = run_cli("datasets", "preview", identity_data, "--model-type",
                        "qwen2.5-7b-instruct", "--model-id-or-path", tiny_model_dir)
    assert previewed.exit_code == 1 and "is a qwen2 model" in previewed.stderr


def test_a_checkpoint_reloads_on_its_own_base_and_refuses_another(
        run_cli, tiny_model_dir, tiny_qwen2_dir, identity_data, tmp_path):
    """The tiny Llama trains as smollm2 (a Llama); `sdk infer` and `sdk export` given a Qwen2
    base for it instead refuse it and write nothing."""
    trained = run_cli("sft", "--model-type", "smollm2-135m-instruct", "--model-id-or-path",
                      tiny_model_dir, "--dataset", identity_data, "--output-dir",
                      tmp_path / "out", "--max-steps", "1", "--batch-size", "2")
    assert trained.exit_code == 0, trained.output
    (checkpoint,) = (tmp_path / "out").glob("smollm2-135m-instruct/v*/checkpoint-1")
    inferred = run_cli("infer", "--ckpt-dir", checkpoint, "--model-id-or-path", tiny_qwen2_dir,
                       "--query", "hi")
    assert inferred.exit_code == 1
    assert "holds a qwen2 model (Qwen2ForCausalLM), but --model-type smollm2-135m-instruct " \
           "is a llama model" in inferred.stderr
    exported = run_cli("export", "--ckpt-dir", checkpoint, "--merge-lora",
                       "--model-id-or-path", tiny_qwen2_dir, "--output-dir", tmp_path / "export")
    assert exported.exit_code == 1 and "is a llama model" in exported.stderr
    assert not (tmp_path / "export").exists()
    answered = run_cli("infer", "--ckpt-dir", checkpoint, "--query", "hi",
                       "--max-new-tokens", "2", "--stream", "false")
    assert answered.exit_code == 0, answered.output


def test_what_says_nothing_about_its_architecture_is_not_refused(tmp_path, tiny_model_dir):
    undeclared = ModelSpec(model_type="tiny-qwen2-chat", family="tiny", template="chatml")
    check_model_folder(undeclared, tiny_model_dir, REGISTRY)  # the conftest's Llama
    qwen2 = REGISTRY.get("models", "qwen2-7b-instruct")
    check_model_folder(qwen2, config_folder(tmp_path / "no-type", {"architectures": []}),
                       REGISTRY)
    # InternLM v1 is Llama-shaped: a Llama-layout copy trains with the same targets
    check_model_folder(REGISTRY.get("models", "internlm-chat-7b"), tiny_model_dir, REGISTRY)
    with pytest.raises(SdkError, match="no config.json"):
        check_model_folder(undeclared, tmp_path, REGISTRY)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(SdkError, match="config.json is not valid JSON"):
        check_model_folder(qwen2, broken, REGISTRY)


def test_a_folder_no_installed_model_type_fits_is_said_so(tmp_path):
    folder = config_folder(tmp_path / "gpt2", {"model_type": "gpt2"})
    with pytest.raises(SdkError, match=r"holds a gpt2 model, but --model-type qwen2-7b-instruct "
                                       r"is a qwen2 model: .* \(no installed one is a gpt2 "
                                       r"model: a plugin can add it\)"):
        check_model_folder(REGISTRY.get("models", "qwen2-7b-instruct"), folder, REGISTRY)
