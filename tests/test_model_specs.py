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


def test_remote_code_needs_trust_remote_code_before_anything_is_loaded(
        run_cli, tmp_path, identity_data):
    plugin = tmp_path / "remote_family.py"
    plugin.write_text(
        "from sdk import hookimpl\nfrom sdk.specs import ModelSpec\n\n"
        "@hookimpl\ndef register_models(register):\n"
        "    register(ModelSpec(model_type='remote-7b-chat', family='remote',\n"
        "                       template='chatml', requires_remote_code=True))\n")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    result = run_cli("--plugin", plugin, "sft", "--model-type", "remote-7b-chat", "--dataset",
                     identity_data, "--model-id-or-path", model_dir, "--output-dir",
                     tmp_path / "out")
    assert result.exit_code == 1
    assert "Model type 'remote-7b-chat' runs code from its model repository. Pass " \
           "--trust-remote-code" in result.stderr
    assert not (tmp_path / "out").exists()


def test_no_first_party_model_type_runs_remote_code():
    """Qwen v1 (its GPTQ types too), ChatGLM2/3, Baichuan2 and InternLM are converted to
    transformers' own architectures on load; the others load as published or are refused."""
    from sdk.catalogue import first_party_plugins

    first_party = [name for plugin in first_party_plugins() for name in plugin.get("models", ())]
    assert not [name for name in first_party if name in REMOTE_CODE]
    converted = {name: REGISTRY.get("models", name).converted_to for name in first_party
                 if REGISTRY.get("models", name).converted_to}
    assert {name: converted.get(name) for name in (
        "qwen-7b-chat", "qwen-7b-chat-int4", "chatglm2-6b", "chatglm3-6b-32k",
        "internlm-chat-7b", "internlm2.5-7b-chat", "baichuan2-7b-chat")} == {
        "qwen-7b-chat": "qwen2", "qwen-7b-chat-int4": "qwen2", "chatglm2-6b": "glm",
        "chatglm3-6b-32k": "glm", "internlm-chat-7b": "llama", "internlm2.5-7b-chat": "llama",
        "baichuan2-7b-chat": "llama"}
    refused = sorted(name for name in first_party if REGISTRY.get("models", name).unsupported)
    assert refused == ["baichuan-13b-chat", "baichuan2-13b-chat", "baichuan2-13b-chat-int4",
                       "baichuan2-7b-chat-int4"]


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
