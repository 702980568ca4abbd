"""Mistakes a new user makes get one message naming the flag or file, before anything is
trained (found by trying the CLI the way ms-swift and LLaMA-Factory users would)."""

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.testing import AnyTunerArguments


@pytest.mark.parametrize("content", ["", "\n\n", "[]"])
def test_a_dataset_file_without_records_is_named(refused_sft, tmp_path, content):
    empty = tmp_path / ("empty.json" if content == "[]" else "empty.jsonl")
    empty.write_text(content)
    assert f"No records found in {empty}" in refused_sft("--dataset", empty)
    assert f"No records found in {empty}" in refused_sft("--val-dataset", empty)


def test_target_modules_the_model_lacks_are_named_with_the_ones_it_has(refused_sft):
    output = refused_sft("--lora-target-modules", "nonexistent_module")
    assert "--lora-target-modules nonexistent_module: no such module in" in output
    assert "q_proj" in output and "down_proj" in output


def test_adalora_needs_steps_to_score_ranks_before_pruning(refused_sft):
    assert "leave fewer than 2 of the 1 training steps" in refused_sft(
        "--sft-type", "adalora", "--gradient-accumulation-steps", "1")


@pytest.mark.parametrize("flags, message", [
    (["--seed", "-1"], "--seed must be at least 0; got -1."),
    (["--seed", "99999999999"], "--seed must be below 4294967296"),
    (["--max-length", "-5"], "--max-length must be at least -1; got -5."),
    (["--micro_batch_size", "2"],
     "No such option '--micro_batch_size': here it is --batch-size."),
    (["--load_in_4bit"], "No such option '--load_in_4bit': here it is --quantization-bit 4."),
    (["--model_max_length", "512"], "here it is --max-length."),
    (["--attn-impl", "flex_attention"], "--attn-impl flex_attention needs a CUDA GPU"),
    (["--use-liger-kernel"], "--use-liger-kernel: liger-kernel needs a CUDA GPU"),
    (["--enable_liger_kernel"], "here it is --use-liger-kernel."),
])
def test_values_and_other_tools_flags(refused_sft, flags, message):
    assert message in refused_sft(*flags)


def test_pissa_with_a_fast_svd_takes_peft_and_ms_swifts_spelling():
    from sdk.config import build_arguments

    arguments = build_arguments(AnyTunerArguments, {"init_lora_weights": "pissa_niter_16"})
    assert (arguments.init_lora_weights, arguments.pissa_niter) == ("pissa", 16)


def test_top_p_above_one_is_refused(run_cli):
    result = run_cli("infer", "--model-type", TINY_MODEL_TYPE, "--top-p", "2")
    assert result.exit_code == 1 and "--top-p must be at most 1; got 2.0." in result.stderr


@pytest.mark.parametrize("flags, named", [
    (["--predictions-file", "out.jsonl"], "--predictions-file applies"),
    (["--batch-size", "4", "--truncate-long-prompts", "true"],
     "--batch-size, --truncate-long-prompts apply"),
])
def test_prediction_flags_without_a_dataset_are_refused(run_cli, flags, named):
    # a chat or --query would ignore them
    result = run_cli("infer", "--model-type", TINY_MODEL_TYPE, "--query", "Hi", *flags)
    assert result.exit_code == 1
    assert (f"{named} to batch prediction; add --dataset (or --val-dataset-from-run), "
            "or leave them out") in result.stderr


def test_weights_without_a_model_type_say_what_is_missing(run_cli, tmp_path, identity_data):
    trained = run_cli("sft", "--model-id-or-path", tmp_path, "--dataset", identity_data)
    chat = run_cli("infer", "--model-id-or-path", tmp_path)
    for result in (trained, chat):
        assert result.exit_code == 1
        assert "--model-id-or-path gives the weights; --model-type says what they are" \
            in result.stderr


def test_an_output_dir_that_is_a_file_is_refused_before_loading(refused_sft, tmp_path):
    file = tmp_path / "taken"
    file.write_text("mine")
    assert f"--output-dir '{file}' is a file; give a folder." in refused_sft("--output-dir", file)
    assert file.read_text() == "mine"


def test_sampling_more_rows_than_a_dataset_has_says_rows_repeat(plugin_set, identity_data,
                                                                 tmp_path, capsys):
    from sdk.config import SftArguments
    from sdk.data.arrow import training_and_held_out

    args = SftArguments(dataset=[f"{identity_data}#10"])
    conversations, _ = training_and_held_out(args, plugin_set.registry, None)
    assert len(conversations) == 10
    assert f"{identity_data}#10: 10 rows from 4, so rows repeat" in capsys.readouterr().err


def test_template_render_takes_a_messages_record_too(run_cli, tmp_path):
    record = tmp_path / "record.json"
    record.write_text('{"messages": [{"role": "user", "content": "Hi"}]}')
    listed = tmp_path / "listed.json"
    listed.write_text('[{"role": "user", "content": "Hi"}]')
    outputs = [run_cli("template", "render", "chatml", "--messages", path).output
               for path in (record, listed)]
    assert outputs[0] == outputs[1] and "<|im_start|>user\nHi<|im_end|>" in outputs[0]


def test_a_template_whose_jinja_does_not_compile_stops_sft_before_the_model_loads(
        run_cli, tiny_plugin_file, identity_data, tmp_path):
    broken = tmp_path / "broken_template.py"
    broken.write_text("from sdk import hookimpl\nfrom sdk.specs import TemplateSpec\n\n"
                      "@hookimpl\ndef register_templates(register):\n"
                      "    register(TemplateSpec(name='broken', jinja='{{ messages }'))\n")
    result = run_cli("--plugin", tiny_plugin_file, "--plugin", broken, "sft", "--model-type",
                     TINY_MODEL_TYPE, "--template", "broken", "--dataset", identity_data,
                     "--output-dir", tmp_path / "out")
    assert result.exit_code == 1
    assert "Template 'broken' has jinja that does not compile" in result.stderr
    assert "Loading weights" not in result.output and not (tmp_path / "out").exists()


def test_report_to_none_of_a_llama_factory_config_means_no_tracker(run_cli, tiny_plugin_file,
                                                                  identity_data, tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(f"model_type: {TINY_MODEL_TYPE}\ndataset: {identity_data}\n"
                      "report_to: none\nmax_steps: 1\nmax_length: 64\n")
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--config", config, "--output-dir",
                     tmp_path / "out")
    assert result.exit_code == 0, result.output
    run = next((tmp_path / "out" / TINY_MODEL_TYPE).glob("v*"))
    assert (run / "checkpoint-1").is_dir() and not (run / "runs").exists()
