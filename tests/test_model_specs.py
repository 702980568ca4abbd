"""Rules every installed model type follows, whichever plugin registers it."""

import re

import pytest

from sdk.plugins import load_plugins

REGISTRY = load_plugins().registry
MODEL_TYPES = REGISTRY.names("models")
REMOTE_CODE = [name for name in MODEL_TYPES if REGISTRY.get("models", name).requires_remote_code]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_a_model_type_is_lower_case_dashed_and_names_a_registered_template(model_type):
    assert re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)*", model_type)
    spec = REGISTRY.get("models", model_type)
    assert REGISTRY.get("templates", spec.template).name == spec.template


@pytest.mark.parametrize("model_type", REMOTE_CODE)
def test_remote_code_needs_trust_remote_code_before_anything_is_loaded(
        run_cli, tmp_path, identity_data, model_type):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    result = run_cli("sft", "--model-type", model_type, "--dataset", identity_data,
                     "--model-id-or-path", model_dir, "--output-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert f"Model type '{model_type}' runs code from its model repository. Pass " \
           "--trust-remote-code" in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_families_with_remote_code_are_gated():
    assert "chatglm3-6b" not in REMOTE_CODE  # converted to Glm on load: no remote code
    assert "internlm2-chat-7b" not in REMOTE_CODE  # converted to Llama on load: no remote code
    assert "baichuan2-7b-chat" not in REMOTE_CODE  # converted to Llama on load: no remote code
    assert "qwen-7b-chat" not in REMOTE_CODE  # converted to Qwen2 on load: no remote code
    assert "qwen-7b-chat-int4" not in REMOTE_CODE  # GPTQ, converted to Qwen2 on load too


def test_an_unsupported_model_type_is_refused_with_its_reason_before_anything_loads(
        run_cli, tmp_path, identity_data):
    plugin = tmp_path / "old_family.py"
    plugin.write_text(
        "from sdk import hookimpl\nfrom sdk.specs import ModelSpec\n\n"
        "@hookimpl\ndef register_models(register):\n"
        "    register(ModelSpec(model_type='old-13b-chat', family='old', template='chatml',\n"
        "                       hub_ids={'huggingface': 'old/old-13b-chat'},\n"
        "                       unsupported='its remote code needs transformers<4.34; use '\n"
        "                                   'old-7b-chat.'))\n")
    for command in (["sft", "--dataset", identity_data, "--output-dir", tmp_path / "out"],
                    ["infer", "--query", "hi"]):
        result = run_cli("--plugin", plugin, command[0], "--model-type", "old-13b-chat",
                         *command[1:])
        assert result.exit_code == 1, result.output
        assert result.stderr.strip().endswith(
            "Model type 'old-13b-chat' cannot run here: its remote code needs "
            "transformers<4.34; use old-7b-chat.")
        assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()
