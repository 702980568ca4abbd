"""registry.toml install hints, `sdk models --all`, and quantization flags on a CPU machine."""

import json

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.catalogue import first_party_plugins
from sdk.errors import SdkError
from sdk.plugins import PluginSet


def test_a_model_type_of_a_plugin_that_is_not_installed_names_the_plugin():
    without_plugins = PluginSet()
    without_plugins.load_builtins()  # no entry points: as if no plugin were installed
    with pytest.raises(SdkError, match="smollm2-135m-instruct is provided by sft-plugin-smollm: "
                                       "pip install sft-plugin-smollm"):
        without_plugins.registry.get("models", "smollm2-135m-instruct")


def test_models_all_lists_every_first_party_model_type(run_cli):
    rows = json.loads(run_cli("models", "--all", "--json").stdout)
    listed = {row["model_type"]: row for row in rows}
    for plugin in first_party_plugins():
        for model_type in plugin.get("models", ()):
            assert listed[model_type]["plugin"] == plugin["name"]
            assert listed[model_type]["installed"] is True  # CI installs every plugin
    table = run_cli("models", "--all").stdout
    assert table.splitlines()[0].split() == ["model_type", "family", "template", "plugin",
                                            "installed"]


def test_quantized_training_needs_a_gpu_and_says_so(run_cli, tiny_plugin_file, identity_data,
                                                   tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the quantized path runs instead of the error")
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--quantization-bit", "4",
                     "--output-dir", tmp_path)
    assert result.exit_code == 1
    assert "--quantization-bit 4 needs a CUDA GPU" in result.stderr


@pytest.mark.parametrize("flags, message", [
    (["--quantization-bit", "3"], "--quantization-bit must be one of 0, 4, 8; got '3'"),
    (["--quantization-bit", "4", "--sft-type", "full"],
     "--sft-type full cannot train a 4-bit model"),
])
def test_quantization_flags_are_checked(run_cli, tiny_plugin_file, identity_data, flags,
                                        message):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, *flags)
    assert result.exit_code == 1 and message in result.stderr
