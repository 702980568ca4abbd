"""Issue 19, item 6: what a run drops is said. Flags that the others leave unused, a dataset
given twice, a file whose records change format, plugin paths that are no .py file, and a
plugin's override=True."""

import json
import textwrap

import pytest

from conftest import TINY_MODEL_TYPE, folder_digest, only_run
from sdk.config import SftArguments
from sdk.plugins import load_plugins
from sdk.testing import AnyTunerArguments
from sdk.train.ignored_flags import ignored_flags


@pytest.fixture(scope="module")
def tuners():
    return {tuner.name: tuner for tuner in load_plugins().registry.specs("tuners")}


def announced(tuners, **settings):
    args = AnyTunerArguments(**settings)
    return ignored_flags(args, tuners[args.sft_type], list(tuners.values()))


@pytest.mark.parametrize("settings, line", [
    ({"sft_type": "full", "lora_rank": 16, "lora_alpha": 64},
     "[sdk] --lora-alpha 64, --lora-rank 16 ignored: --sft-type full does not use them "
     "(adalora, dora, lora, qlora, rslora do)."),
    ({"sft_type": "adalora", "lora_rank": 16},  # AdaLoRA's ranks are --adalora-*-rank
     "[sdk] --lora-rank 16 ignored: --sft-type adalora does not use it (dora, lora, qlora, "
     "rslora do)."),
    ({"sft_type": "lora", "num_virtual_tokens": 5},
     "[sdk] --num-virtual-tokens 5 ignored: --sft-type lora does not use it (prefix, prompt, "
     "ptuning do)."),
    ({"val_dataset": ["val.jsonl"], "split_dataset_ratio": 0.1},
     "[sdk] --split-dataset-ratio 0.1 ignored: --val-dataset gives the held-out rows, and "
     "every --dataset row trains."),
    ({"batch_size": 4, "max_tokens_per_batch": 512},
     "[sdk] --batch-size 4 ignored: --max-tokens-per-batch 512 makes the batches."),
    ({"hub_model_id": "me/tiny", "hub_private_repo": False},
     "[sdk] --hub-model-id me/tiny, --hub-private-repo false ignored: they say what "
     "--push-to-hub uploads where, and it is not given."),
    ({"max_new_tokens": 64},
     "[sdk] --max-new-tokens 64 ignored: it limits the replies of --predict-with-generate, "
     "which is not given."),
    ({"eval_steps": 3},
     "[sdk] --eval-steps 3 ignored: there is no held-out data to evaluate (--val-dataset, "
     "--split-dataset-ratio)."),
])
def test_a_flag_the_run_does_not_use_is_announced(tuners, settings, line):
    assert announced(tuners, **settings) == [line]


@pytest.mark.parametrize("settings", [
    {"sft_type": "lora", "lora_rank": 16, "lora_alpha": 64, "lora_target_modules": ["q_proj"]},
    {"sft_type": "adalora", "adalora_init_rank": 16, "lora_alpha": 64},
    {"sft_type": "ptuning", "num_virtual_tokens": 5, "prompt_encoder_hidden_size": 64},
    {"sft_type": "freeze", "freeze_trainable_layers": 1},
    {"split_dataset_ratio": 0.1, "eval_steps": 3, "batch_size": 4},
    {"push_to_hub": True, "hub_model_id": "me/tiny", "predict_with_generate": True,
     "max_new_tokens": 64},
])
def test_flags_the_run_uses_are_not_announced(tuners, settings):
    assert announced(tuners, **settings) == []


@pytest.mark.slow
def test_sdk_sft_announces_each_dropped_flag_once_and_trains(run_cli, tiny_plugin_file,
                                                             identity_data, tmp_path):
    shared = tmp_path / "shared.yaml"  # another tuner's option is refused on the command line
    shared.write_text("lora_rank: 16\n")
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, f"{identity_data.parent}/./{identity_data.name}",
                     "--val-dataset", identity_data, "--split-dataset-ratio", "0.5",
                     "--sft-type", "full", "--config", shared, "--batch-size", "4",
                     "--max-tokens-per-batch", "64", "--max-steps", "1",
                     "--output-dir", tmp_path / "out")
    assert result.exit_code == 0, result.output
    lines = [
        "[sdk] --split-dataset-ratio 0.5 ignored: --val-dataset gives the held-out rows, and "
        "every --dataset row trains.",
        "[sdk] --batch-size 4 ignored: --max-tokens-per-batch 64 makes the batches.",
        "[sdk] --lora-rank 16 ignored: --sft-type full does not use it (dora, lora, qlora, "
        "rslora do).",
        f"[sdk] --dataset names the same data 2 times ({identity_data}, "
        f"{identity_data.parent}/./{identity_data.name}): each entry adds its rows, as given.",
    ]
    stderr = result.stderr.splitlines()
    assert [stderr.count(line) for line in lines] == [1, 1, 1, 1]
    assert "[sdk] data: 8 training rows" in result.stderr  # both copies train
    saved = json.loads((only_run(tmp_path / "out") / "sft_args.json").read_text())
    assert saved["split_dataset_ratio"] == 0.0  # saved as it applied (ms-swift does the same)


@pytest.mark.parametrize("flags, message", [
    (("--sft-type", "full", "--lora-rank", "16"),
     "--lora-rank is an option of --sft-type dora, lora, qlora, rslora; this run is --sft-type "
     "full. Leave it out, or choose a tuner that uses it."),
    (("--sft-type", "adalora", "--init_lora_weights", "gaussian", "--lora-alpha", "16"),
     "--init-lora-weights is an option of --sft-type dora, lora, qlora, rslora; this run is "
     "--sft-type adalora."),
    (("--lora-rank", "4", "--num-virtual-tokens", "5", "--prompt-encoder-hidden-size", "8"),
     "--num-virtual-tokens is an option of --sft-type prefix, prompt, ptuning; "
     "--prompt-encoder-hidden-size is an option of --sft-type ptuning; this run is --sft-type "
     "lora. Leave them out"),
])
def test_another_tuners_flag_on_the_command_line_is_refused(refused_sft, tmp_path, flags,
                                                             message):
    assert message in " ".join(refused_sft(*flags).split())
    assert not (tmp_path / "out").exists()


MIXED = [
    {"messages": [{"role": "user", "content": "Who are you?"},
                  {"role": "assistant", "content": "I am Tiny."}]},
    {"instruction": "Say hi", "input": "", "output": "hi"},
]


def test_a_record_in_another_format_names_the_first_record_that_set_the_files(refused_sft,
                                                                            tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    mixed = data / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(record) + "\n" for record in MIXED))
    before = folder_digest(data)
    output = refused_sft("--dataset", mixed)
    assert (f"{mixed}:2: a record in alpaca format, in a file whose format is messages, set by "
            f"its first record ({mixed}:1); a file holds one format.") in output
    assert folder_digest(data) == before and not (tmp_path / "out").exists()


def test_skipped_records_of_another_format_say_so(plugin_set, tmp_path):
    from sdk.data.conversations import load_conversations

    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(record) + "\n" for record in MIXED))
    skipped: list[str] = []
    rows = load_conversations([str(mixed)], plugin_set.registry, SftArguments(), skipped=skipped)
    assert len(rows) == 1
    assert skipped == [f"{mixed}:2 (alpaca format in a messages file)"]


@pytest.mark.parametrize("make, what", [
    (lambda folder: folder, "is a folder without __init__.py; name the plugin's .py file or "
                            "package folder"),
    (lambda folder: folder / "plugin.yaml", "is not a Python file; name the plugin's .py file."),
])
def test_a_plugins_path_that_is_no_python_file_says_what_it_is(run_cli, tmp_path, monkeypatch,
                                                               make, what):
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "plugin.yaml").write_text("register_models: []\n")
    before = folder_digest(folder)
    path = make(folder)
    monkeypatch.setenv("SFT_SDK_PLUGINS", str(path))
    result = run_cli("plugins")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Plugin file '{path}' (SFT_SDK_PLUGINS) {what}" in result.stderr
    assert folder_digest(folder) == before


OVERRIDE = f"""
    from sdk import hookimpl
    from sdk.specs import ModelSpec

    @hookimpl
    def register_models(register):
        register(ModelSpec(model_type={TINY_MODEL_TYPE!r}, family="mine", template="chatml"),
                 override=True)
"""


def test_an_override_of_a_model_type_is_announced_once(run_cli, tiny_plugin_file, tmp_path):
    winner = tmp_path / "winner.py"
    winner.write_text(textwrap.dedent(OVERRIDE))
    result = run_cli("--plugin", tiny_plugin_file, "--plugin", winner, "models", "--json")
    assert result.exit_code == 0
    rows = {row["model_type"]: row for row in json.loads(result.stdout)}
    assert rows[TINY_MODEL_TYPE]["family"] == "mine"
    assert result.stderr.splitlines() == [
        f"[sdk] plugin {winner} replaces model type '{TINY_MODEL_TYPE}' of plugin "
        f"{tiny_plugin_file} (override=True)."]
    plain = run_cli("--plugin", tiny_plugin_file, "models", "--json")
    assert "replaces" not in plain.stderr
