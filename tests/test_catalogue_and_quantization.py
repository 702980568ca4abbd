"""registry.toml install hints, `sdk models --all`, and QLoRA (4/8-bit bitsandbytes bases)."""

import json
import shutil

import pytest
import torch

from conftest import TINY_MODEL_TYPE, TINY_SIZE, TOKENIZERS
from sdk.catalogue import first_party_plugins
from sdk.errors import SdkError
from sdk.plugins import PluginSet
from sdk.testing import AnyTunerArguments, train_and_reload


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


@pytest.mark.parametrize("bits, layer", [(4, "Linear4bit"), (8, "Linear8bitLt")])
def test_qlora_trains_and_reloads_onto_a_quantized_base(plugin_set, tiny_model_64, identity_data,
                                                       tmp_path, bits, layer):
    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_64,
                                identity_data, tmp_path, quantization_bit=bits)
    assert reloaded.saved["quantization_bit"] == bits
    attention = reloaded.model.base_model.model.model.layers[0].self_attn
    assert type(attention.q_proj.base_layer).__name__ == layer  # the base stayed quantized
    assert attention.q_proj.lora_A["default"].weight.dtype == torch.float32


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


def test_qlora_keeps_the_unquantized_layers_in_the_loaded_dtype(plugin_set, tiny_model_64):
    # peft's kbit preparation would cast them to fp32, and with them every activation
    from sdk.models.loader import LoadOptions, load_pretrained
    from sdk.specs import ModelSpec, resolve_callable

    model, _ = load_pretrained(tiny_model_64, LoadOptions(dtype="bf16", quantization_bit=4))
    args = AnyTunerArguments(model_type=TINY_MODEL_TYPE, sft_type="qlora", dataset=["unused"],
                        dtype="bf16", quantization_bit=4, gradient_checkpointing=True)
    tuner = plugin_set.registry.get("tuners", "qlora")
    spec = ModelSpec(TINY_MODEL_TYPE, "llama", "chatml")
    model = resolve_callable(tuner.prepare)(model, args, spec)
    base = model.get_base_model().model
    assert {base.embed_tokens.weight.dtype, base.norm.weight.dtype,
            base.layers[0].input_layernorm.weight.dtype} == {torch.bfloat16}
    hidden = []
    base.layers[0].register_forward_hook(lambda module, inputs, output: hidden.append(output))
    model.train()
    row = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=row, labels=row).loss.backward()
    first = hidden[0][0] if isinstance(hidden[0], tuple) else hidden[0]
    assert first.dtype == torch.bfloat16
    assert all(parameter.grad is not None for name, parameter in model.named_parameters()
               if parameter.requires_grad)


# The new families' architectures, each a tiny random model under its plugin's LoRA targets:
# (model type, config.json model_type, the config's other settings). Gemma 2 and InternLM3
# (Llama's modules, as the tiny model above) quantize as Gemma 3 and Qwen3 do.
QLORA_ARCHITECTURES = [
    ("qwen3-8b", "qwen3", {}),
    ("qwen3-30b-a3b", "qwen3_moe", {"num_experts": 4, "num_experts_per_tok": 2,
                                    "moe_intermediate_size": 32}),
    ("gemma3-1b-it", "gemma3_text", {}),
    ("phi4-14b", "phi3", {}),  # fused qkv_proj and gate_up_proj
    ("glm4-9b-0414", "glm4", {}),  # fused gate_up_proj
]


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tokenizer")
    AutoTokenizer.from_pretrained(TOKENIZERS / "mistral-v0.1").save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_type, architecture, settings", QLORA_ARCHITECTURES)
def test_qlora_puts_each_familys_lora_targets_on_4_bit_layers(sdk_registry, tokenizer_folder,
                                                               tmp_path, model_type,
                                                               architecture, settings):
    from transformers import AutoConfig, AutoModelForCausalLM

    from sdk.models.loader import LoadOptions, load_pretrained, unquantized_experts_notice
    from sdk.specs import resolve_callable

    folder = shutil.copytree(tokenizer_folder, tmp_path / model_type)
    config = AutoConfig.for_model(architecture, vocab_size=32000, pad_token_id=0, head_dim=8,
                                  **TINY_SIZE, **settings)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    model, _ = load_pretrained(folder, LoadOptions(dtype="fp32", quantization_bit=4))
    spec = sdk_registry.get("models", model_type)
    args = AnyTunerArguments(model_type=model_type, sft_type="qlora", dataset=["unused"],
                             dtype="fp32", quantization_bit=4)
    model = resolve_callable(sdk_registry.get("tuners", "qlora").prepare)(model, args, spec)
    bases = {name.rsplit(".", 1)[-1]: type(module.base_layer).__name__
             for name, module in model.named_modules() if hasattr(module, "base_layer")}
    assert bases == dict.fromkeys(spec.lora_target_modules, "Linear4bit")
    model.train()
    row = torch.tensor([[5, 6, 7, 8]])
    model(input_ids=row, labels=row).loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters()
               if parameter.requires_grad)
    notice = unquantized_experts_notice(model, 4)
    if architecture == "qwen3_moe":  # its experts are weights, not linear layers
        # 2 layers x 4 experts x (gate and up 2 x 32 x 32 + down 32 x 32)
        assert notice == ("--quantization-bit 4: bitsandbytes quantizes linear layers only; the "
                          "24,576 weights of the fused MoE experts stay float32 (QLoRA saves "
                          "little memory on this model)")
    else:
        assert notice is None
