"""--rope-scaling: a run trained beyond the model's window stretches its rotary positions, saves
the factor, and reloads (adapter on a freshly loaded base) with the same positions."""

import pytest
import torch

from conftest import CONVERSATIONS, TINY_MODEL_TYPE, TOKENIZERS, save_tiny_model
from sdk.errors import SdkError
from sdk.models.loader import LoadOptions, load_pretrained
from sdk.models.rope import stretch_rope
from sdk.testing import train_and_reload


@pytest.fixture(scope="module")
def short_window_model(tmp_path_factory):
    """The tiny Llama with a 32-position window."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    return save_tiny_model(LlamaForCausalLM, LlamaConfig, tokenizer,
                           tmp_path_factory.mktemp("window-32"), max_position_embeddings=32,
                           pad_token_id=tokenizer.pad_token_id)


def probe_logits(model_dir, **rope):
    model, tokenizer = load_pretrained(model_dir, LoadOptions(**rope))
    ids = tokenizer.apply_chat_template(CONVERSATIONS["multi turn"], return_tensors="pt",
                                        return_dict=True)["input_ids"]
    assert ids.shape[1] > 32  # past the window
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_each_kind_changes_the_positions_past_the_window(short_window_model, kind):
    plain = probe_logits(short_window_model)
    stretched = probe_logits(short_window_model, rope_scaling=kind, context_length=64)
    assert not torch.allclose(plain[:, 33:], stretched[:, 33:], atol=1e-4)


def test_a_stretched_run_reloads_with_its_factor(plugin_set, short_window_model, identity_data,
                                                 tmp_path):
    # train_and_reload compares the reloaded model's logits with the trained model's: a base
    # reloaded without YaRN (which also scales attention) would differ
    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, short_window_model,
                                identity_data, tmp_path, rope_scaling="yarn", max_length=80)
    assert reloaded.saved["rope_scaling"] == "yarn" and reloaded.saved["rope_factor"] == 3.0
    for model in (reloaded.model, reloaded.result.model):
        rope = model.get_base_model().config.rope_parameters
        assert (rope["rope_type"], rope["factor"]) == ("yarn", 3.0)
        assert rope["original_max_position_embeddings"] == 32


def test_a_factor_can_be_given(short_window_model):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(short_window_model)
    assert stretch_rope(config, "linear", 4.0, 0, "here") == 4.0
    assert config.rope_parameters["factor"] == 4.0


def test_a_model_without_rotary_positions_is_refused():
    from transformers import GPT2Config

    with pytest.raises(SdkError, match="has no rotary position settings"):
        stretch_rope(GPT2Config(), "yarn", None, 4096, "gpt2-folder")


def test_mistakes_are_named(refused_sft, tiny_model_dir, short_window_model, tmp_path):
    def sft(model_dir, *flags):
        return refused_sft("--model-id-or-path", model_dir, *flags)

    assert ("--rope-scaling yarn: --max-length 64 fits the 512-position window" in
            sft(tiny_model_dir, "--rope-scaling", "yarn", "--max-length", "64"))
    assert "--rope-scaling linear: give --rope-factor" in sft(
        short_window_model, "--rope-scaling", "linear", "--max-length", "0")
    assert "--rope-factor" in sft(short_window_model, "--rope-scaling", "yarn",
                                  "--rope-factor", "1")
    assert "--rope-factor 2 needs --rope-scaling linear, dynamic or yarn" in sft(
        short_window_model, "--rope-factor", "2")
    from transformers import AutoModelForCausalLM

    scaled = tmp_path / "scaled"
    model = AutoModelForCausalLM.from_pretrained(short_window_model)
    model.config.rope_parameters.update(rope_type="linear", factor=2.0)
    model.save_pretrained(scaled)
    (scaled / "tokenizer.json").write_bytes((short_window_model / "tokenizer.json").read_bytes())
    (scaled / "tokenizer_config.json").write_bytes(
        (short_window_model / "tokenizer_config.json").read_bytes())
    assert "already scales its positions (linear, factor 2.0)" in sft(
        scaled, "--rope-scaling", "yarn", "--max-length", "80")


def test_a_whole_model_checkpoint_keeps_its_positions_or_loads_as_a_folder(
        plugin_set, run_cli, tiny_plugin_file, short_window_model, identity_data, tmp_path):
    from sdk.config import SftArguments
    from sdk.train.sft import run_sft

    result = run_sft(SftArguments(
        model_type=TINY_MODEL_TYPE, model_id_or_path=str(short_window_model), sft_type="full",
        dataset=[str(identity_data)], max_steps=1, batch_size=2, save_steps=1,
        output_dir=str(tmp_path)), plugin_set.registry)
    rope = ["--rope-scaling", "linear", "--rope-factor", "2", "--query", "Hi",
            "--max-new-tokens", "2"]
    refused = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", result.checkpoint,
                      *rope)
    assert refused.exit_code == 1 and "holds a whole model, whose config.json keeps its " \
        "positions unstretched" in refused.stderr
    as_folder = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                        "--model-id-or-path", result.checkpoint, *rope)
    assert as_folder.exit_code == 0, as_folder.output


def test_a_whole_model_trained_stretched_keeps_its_factor(plugin_set, run_cli, tiny_plugin_file,
                                                         short_window_model, identity_data,
                                                         tmp_path):
    from sdk.config import SftArguments
    from sdk.train.sft import run_sft

    result = run_sft(SftArguments(
        model_type=TINY_MODEL_TYPE, model_id_or_path=str(short_window_model), sft_type="full",
        dataset=[str(identity_data)], max_steps=1, batch_size=2, save_steps=1, max_length=80,
        rope_scaling="yarn", output_dir=str(tmp_path)), plugin_set.registry)
    refused = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", result.checkpoint,
                      "--rope-scaling", "linear", "--query", "Hi")
    assert refused.exit_code == 1
    assert "keeps its positions: yarn, factor 3.0, as it was trained" in refused.stderr


def test_a_reply_past_the_pretrained_window_of_a_stretched_model_is_not_called_too_long(
        run_cli, tiny_plugin_file, short_window_model, monkeypatch):
    import logging

    from transformers.utils import logging as transformers_logging

    class Collected(logging.Handler):
        messages: list[str] = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    reminders = logging.getLogger("transformers.generation.stopping_criteria")
    monkeypatch.setattr(reminders, "filters", [])
    monkeypatch.setattr(reminders, "handlers", [Collected()])

    def reminded():
        transformers_logging.warning_once.cache_clear()  # it warns once a process
        Collected.messages.clear()
        # the prompt and reply pass the 32 pretrained positions, within the 128 stretched ones
        result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                         "--model-id-or-path", short_window_model, "--query", "Who are you?",
                         "--max-new-tokens", "30", "--rope-scaling", "linear",
                         "--rope-factor", "4")
        assert result.exit_code == 0, result.output
        return any("predefined maximum length (32)" in message
                   for message in Collected.messages)

    with monkeypatch.context() as unquieted:
        unquieted.setattr("sdk.infer.load.quiet_window_reminder", lambda config: None)
        assert reminded()
    assert not reminded()
