"""--optim (transformers' optimizers by name) and --loraplus-lr-ratio (LoRA+), read back from
the optimizer state a checkpoint saves."""

import re
import textwrap

import pytest
import torch

from conftest import TINY_MODEL_TYPE
from sdk.testing import AnyTunerArguments
from sdk.train.sft import run_sft


def train(plugin_set, identity_data, tmp_path, **overrides):
    settings = dict(model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)],
                    output_dir=str(tmp_path / "output"), max_steps=2, batch_size=2,
                    gradient_accumulation_steps=1, learning_rate=1e-3, save_steps=2, seed=0)
    return run_sft(AnyTunerArguments(**{**settings, **overrides}), plugin_set.registry)


def optimizer_state(checkpoint):
    return torch.load(checkpoint / "optimizer.pt", weights_only=True)


def test_loraplus_trains_the_b_matrices_faster_and_resumes(plugin_set, identity_data,
                                                           tmp_path):
    result = train(plugin_set, identity_data, tmp_path, loraplus_lr_ratio=16.0)
    names = [name for name, parameter in result.model.named_parameters()
             if parameter.requires_grad]
    groups = optimizer_state(result.checkpoint)["param_groups"]
    sizes = {len(group["params"]): group["lr"] for group in groups if group["params"]}
    b_matrices = sum("lora_B" in name for name in names)
    assert set(sizes) == {len(names) - b_matrices, b_matrices}  # A matrices, then B
    assert sizes[b_matrices] == pytest.approx(16 * sizes[len(names) - b_matrices])
    # the resumed run loads that optimizer state into the same groups
    resumed = train(plugin_set, identity_data, tmp_path, loraplus_lr_ratio=16.0, max_steps=3,
                    save_steps=1, resume_from_checkpoint=str(result.checkpoint))
    assert resumed.checkpoint.name == "checkpoint-3"


def test_resuming_with_another_optimizer_or_loraplus_ratio_is_refused(plugin_set,
                                                                     identity_data, tmp_path):
    from sdk.errors import SdkError

    result = train(plugin_set, identity_data, tmp_path, optim="adafactor",
                   loraplus_lr_ratio=8.0)
    resume = dict(max_steps=3, resume_from_checkpoint=str(result.checkpoint))
    # the saved state has other groups (a traceback from torch) or other learning rates
    for changed, message in [(dict(optim="adamw_torch", loraplus_lr_ratio=8.0),
                              "--optim 'adafactor' there, 'adamw_torch' now"),
                             (dict(optim="adafactor"), "--loraplus-lr-ratio 8.0 there, None now"),
                             (dict(optim="adafactor", loraplus_lr_ratio=4.0),
                              "--loraplus-lr-ratio 8.0 there, 4.0 now")]:
        with pytest.raises(SdkError, match=re.escape(message)):
            train(plugin_set, identity_data, tmp_path, **changed, **resume)
    assert [c.name for c in result.run_dir.glob("checkpoint-*")] == ["checkpoint-2"]


def test_optim_picks_the_optimizer(plugin_set, identity_data, tmp_path):
    plain = optimizer_state(train(plugin_set, identity_data, tmp_path / "a").checkpoint)
    adafactor = optimizer_state(train(plugin_set, identity_data, tmp_path / "b",
                                      optim="adafactor").checkpoint)
    assert "betas" in plain["param_groups"][0]
    assert "scale_parameter" in adafactor["param_groups"][0]  # Adafactor's own setting



def test_mistakes_are_named(refused_sft):
    assert "--optim adamw_torch_fuse is not an optimizer transformers knows. Did you mean " \
           "adamw_torch_fused" in refused_sft("--optim", "adamw_torch_fuse")
    # transformers' own message, under the flag's name
    assert "--optim galore_adamw:" in refused_sft("--optim", "galore_adamw")
    assert "here it is --loraplus-lr-ratio" in refused_sft("--lorap_lr_ratio", "16")


@pytest.mark.parametrize("sft_type", ["full", "ia3", "prompt"])
def test_loraplus_with_a_tuner_without_b_matrices_is_refused_before_loading(
        run_cli, tiny_plugin_file, identity_data, tmp_path, sft_type):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--model-id-or-path", tmp_path / "nonexistent", "--dataset", identity_data,
                     "--sft-type", sft_type, "--loraplus-lr-ratio", "16")
    assert result.exit_code == 1
    assert f"--sft-type {sft_type} trains none" in result.stderr


def test_loraplus_with_a_third_party_tuner_without_b_matrices_is_refused(
        run_cli, tiny_plugin_file, identity_data, tmp_path):
    # a tuner that declares no check: found from the prepared model's trainable parameters
    plugin = tmp_path / "head_tuner.py"
    plugin.write_text(textwrap.dedent("""
        from sdk import hookimpl
        from sdk.specs import Tuner

        def prepare(model, args, spec):
            for name, parameter in model.named_parameters():
                parameter.requires_grad = name.startswith("lm_head")
            return model

        @hookimpl
        def register_tuners(register):
            register(Tuner(name="head", prepare=prepare, load="sdk.tuners.full:load"))
    """))
    result = run_cli("--plugin", tiny_plugin_file, "--plugin", plugin, "sft", "--model-type",
                     TINY_MODEL_TYPE, "--dataset", identity_data, "--sft-type", "head",
                     "--loraplus-lr-ratio", "16", "--output-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert "--sft-type head trains none" in result.stderr
