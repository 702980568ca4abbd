"""The Arrow data path of `sdk sft`: streamed into the datasets cache, tokenized with map."""

import json
import re

from conftest import TINY_MODEL_TYPE


def sft(run_cli, tiny_plugin_file, data, tmp_path, *flags):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", data, "--max-steps", "1", "--batch-size", "2",
                     "--gradient-accumulation-steps", "1", "--output-dir", tmp_path / "out",
                     *flags)
    assert result.exit_code == 0, result.output
    return result.stderr


def rows_trained(stderr):
    return int(re.search(r"\[sdk\] data: (\d+) training rows", stderr).group(1))


def write(path, rows, bad_lines=()):
    lines = [json.dumps({"query": f"q{i}", "response": f"r{i}"}) for i in range(rows)]
    path.write_text("\n".join([*lines, *bad_lines]) + "\n")


def test_a_changed_file_is_read_again_and_skips_are_reported_from_the_cache(
        run_cli, tiny_plugin_file, tmp_path):
    data = tmp_path / "d.jsonl"
    write(data, 4, bad_lines=['{"query": "broken", '])
    first = sft(run_cli, tiny_plugin_file, data, tmp_path, "--skip-bad-records")
    again = sft(run_cli, tiny_plugin_file, data, tmp_path, "--skip-bad-records")
    for stderr in (first, again):  # the second run reads the converted rows from the cache
        assert rows_trained(stderr) == 4
        assert f"skipped 1 bad records (--skip-bad-records), first at: {data}:5" in stderr
    write(data, 6)
    assert rows_trained(sft(run_cli, tiny_plugin_file, data, tmp_path)) == 6


def test_several_processes_tokenize_the_same_rows(run_cli, tiny_plugin_file, tmp_path):
    data = tmp_path / "d.jsonl"
    write(data, 8)
    one = sft(run_cli, tiny_plugin_file, data, tmp_path)
    two = sft(run_cli, tiny_plugin_file, data, tmp_path, "--dataset-num-proc", "2")
    summary = re.compile(r"\[sdk\] data: [^\n]*")
    assert summary.search(one).group(0) == summary.search(two).group(0)
    assert rows_trained(two) == 8


def test_sampling_and_held_out_split_on_the_arrow_path(run_cli, tiny_plugin_file, tmp_path):
    data = tmp_path / "d.jsonl"
    write(data, 10)
    stderr = sft(run_cli, tiny_plugin_file, f"{data}#20", tmp_path,
                 "--split-dataset-ratio", "0.25", "--eval-steps", "1")
    assert rows_trained(stderr) == 15
    assert "[sdk] held-out data: 5 training rows" in stderr


def test_rows_converted_by_other_sdk_code_are_converted_again(run_cli, tiny_plugin_file,
                                                              tmp_path, monkeypatch):
    import sdk.data.arrow as arrow

    conversions = []
    convert = arrow.iter_dataset
    monkeypatch.setattr(arrow, "iter_dataset",
                        lambda *args, **kwargs: conversions.append(1) or convert(*args, **kwargs))
    data = tmp_path / "d.jsonl"
    write(data, 4)
    sft(run_cli, tiny_plugin_file, data, tmp_path)
    sft(run_cli, tiny_plugin_file, data, tmp_path)
    assert len(conversions) == 1  # the second run read the cache
    monkeypatch.setattr(arrow, "sdk_code_digest", lambda: "an upgraded sdk")
    assert rows_trained(sft(run_cli, tiny_plugin_file, data, tmp_path)) == 4
    assert len(conversions) == 2
