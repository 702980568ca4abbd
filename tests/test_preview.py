"""`sdk datasets preview`: rendered rows with trained spans marked, and their lengths."""

from conftest import TINY_MODEL_TYPE


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
    assert "Lengths: 4 rows, tokens: min " in out and "0 longer than --max-length" in out


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
    config.write_text(f"dataset: {identity_data}\ntemplate: chatml\n")
    result = run_cli("datasets", "preview", "--config", config, "-n", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"4 rows from {identity_data}; template 'chatml'")
