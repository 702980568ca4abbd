"""`sdk datasets preview`: rendered rows with trained spans marked, and their lengths."""

from conftest import TINY_MODEL_TYPE
from sdk.data.preview import length_summary


def test_preview_marks_the_trained_spans_and_counts_tokens(run_cli, tiny_plugin_file,
                                                          tiny_model_dir, identity_data):
    result = run_cli("--plugin", tiny_plugin_file, "datasets", "preview", identity_data,
                     "--model-type", TINY_MODEL_TYPE, "--model-id-or-path", tiny_model_dir,
                     "-n", "2")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"4 rows from {identity_data}; template 'chatml'")
    assert out.count("--- row ") == 2
    assert out.count("[[I am Tiny, made by the tests.<|im_end|>]]") == 2
    assert "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n[[" in out
    assert "Lengths: 4 rows, tokens: min " in out
    assert ("0 longer than --max-length, which training cuts at the end "
            "(--truncation-strategy truncation_right)") in out


def test_preview_with_a_template_only_counts_characters(run_cli, identity_data):
    result = run_cli("datasets", "preview", identity_data, "--template", "default",
                     "--loss-scope", "last", "-n", "1")
    assert result.exit_code == 0, result.output
    assert "### Assistant:\n[[I am Tiny, made by the tests.{eos_token}]]" in result.stdout
    assert "characters (give --model-type for tokens)" in result.stdout


def test_preview_needs_a_dataset_and_a_template(run_cli, identity_data):
    assert "Name a dataset" in run_cli("datasets", "preview", "--template", "chatml").stderr
    result = run_cli("datasets", "preview", identity_data)
    assert result.exit_code == 1 and "Give --model-type" in result.stderr


def test_preview_reads_the_dataset_of_a_config_file(run_cli, identity_data, tmp_path):
    config = tmp_path / "preview.yaml"
    # a run's config: what does not change a preview is checked as sdk sft would, then ignored
    config.write_text(f"dataset: {identity_data}\ntemplate: chatml\nlearning_rate: 1e-4\n"
                      "deepspeed: zero2\n")
    result = run_cli("datasets", "preview", "--config", config, "-n", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"4 rows from {identity_data}; template 'chatml'")
    config.write_text(f"dataset: {identity_data}\ntemplate: chatml\nlearning_rat: 1e-4\n")
    result = run_cli("datasets", "preview", "--config", config)
    assert result.exit_code == 1 and "did you mean 'learning_rate'" in result.stderr


def test_preview_shows_the_system_prompt_of_system(run_cli, identity_data):
    result = run_cli("datasets", "preview", identity_data, "--template", "chatml",
                     "--system", "Answer briefly.", "-n", "1")
    assert result.exit_code == 0, result.output
    assert "--- row 1 ---\n<|im_start|>system\nAnswer briefly.<|im_end|>\n" in result.stdout


def test_preview_says_what_training_does_with_rows_over_max_length():
    summary = length_summary([30, 5, 20], "tokens", 10, "delete")
    assert summary == ("3 rows, tokens: min 5, median 20, p90 30, p99 30, max 30; 2 longer than "
                       "--max-length, which training leaves out (--truncation-strategy delete)")
