"""Loss curves: the points read from logging.jsonl, the image `sdk sft` and `sdk plot` write,
and `sdk plot`'s errors."""

import json

import pytest

from conftest import TINY_MODEL_TYPE
from sdk.runs.run_dir import newest_run
from sdk.train.plot import PLOT_FILE, loss_points

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(tmp_path, records, tail=""):
    run_dir = tmp_path / "output" / TINY_MODEL_TYPE / "v0-20250101-000000"
    run_dir.mkdir(parents=True)
    (run_dir / "sft_args.json").write_text("{}")
    if records is not None:
        lines = "".join(json.dumps(record) + "\n" for record in records)
        (run_dir / "logging.jsonl").write_text(lines + tail)
    return run_dir


# A run logged every step, evaluated every 2 steps, resumed once (step 3 logged again), and
# still training (its last line is being written).
LOG = [
    {"step": 1, "epoch": 0.1, "loss": 3.0, "grad_norm": 1.0, "learning_rate": 1e-4},
    {"step": 2, "epoch": 0.2, "loss": 2.5, "grad_norm": 1.0, "learning_rate": 1e-4},
    {"step": 2, "epoch": 0.2, "eval_loss": 2.8, "eval_token_accuracy": 0.3},
    {"step": 3, "epoch": 0.3, "loss": 2.4, "grad_norm": 1.0, "learning_rate": 1e-4},
    {"step": 3, "epoch": 0.3, "loss": 2.2, "grad_norm": 1.0, "learning_rate": 1e-4},
    {"step": 4, "epoch": 0.4, "loss": 2.0, "grad_norm": 1.0, "learning_rate": 1e-4},
    {"step": 4, "epoch": 0.4, "eval_loss": 2.1, "eval_token_accuracy": 0.4},
    {"step": 4, "epoch": 0.4, "train_runtime": 9.0, "train_loss": 2.4},
]


def test_the_points_are_the_losses_by_step(tmp_path):
    run_dir = make_run(tmp_path, LOG, tail='{"step": 5, "epoch": 0.5, "lo')
    curves = loss_points(run_dir / "logging.jsonl")
    assert curves.train == [(1, 3.0), (2, 2.5), (3, 2.2), (4, 2.0)]
    assert curves.eval == [(2, 2.8), (4, 2.1)]


def test_sdk_plot_writes_a_png_into_the_run_folder_and_anywhere_else(run_cli, tmp_path):
    run_dir = make_run(tmp_path, LOG)
    result = run_cli("plot", run_dir)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(run_dir / PLOT_FILE)
    assert (run_dir / PLOT_FILE).read_bytes().startswith(PNG_MAGIC)

    svg = tmp_path / "curves.svg"
    result = run_cli("plot", run_dir, "--output", svg)
    assert result.exit_code == 0, result.output
    assert "<svg" in svg.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.svg", "output"]  # no leftovers

    nested = tmp_path / "plots" / "today" / "loss.png"  # folders made as for predictions
    result = run_cli("plot", run_dir, "--output", nested)
    assert result.exit_code == 0, result.output
    assert nested.read_bytes().startswith(PNG_MAGIC)


def test_sdk_plot_takes_a_runs_logging_jsonl(run_cli, tmp_path):
    run_dir = make_run(tmp_path, LOG)
    result = run_cli("plot", run_dir / "logging.jsonl")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(run_dir / PLOT_FILE)
    assert (run_dir / PLOT_FILE).read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("case, message", [
    ("missing", "is not a folder"),
    ("not a run", "is not a run folder of `sdk sft` (it has no sft_args.json)"),
    ("no log", "has no logging.jsonl yet"),
    ("no loss", "holds no loss yet"),
    ("bad format", "use .png, .svg or .pdf"),
])
def test_sdk_plot_errors(run_cli, tmp_path, case, message):
    flags = []
    if case == "missing":
        target = tmp_path / "missing"
    elif case == "not a run":
        target = tmp_path
    elif case == "no log":
        target = make_run(tmp_path, None)
    elif case == "no loss":
        target = make_run(tmp_path, [{"step": 1, "train_runtime": 1.0}])
    else:
        target = make_run(tmp_path, LOG)
        (target / PLOT_FILE).write_bytes(b"earlier plot")
        flags = ["--output", target / PLOT_FILE.replace(".png", ".xyz")]
    result = run_cli("plot", target, *flags)
    assert result.exit_code == 1 and message in result.stderr, result.output
    if case == "bad format":  # nothing written, nothing lost
        assert (target / PLOT_FILE).read_bytes() == b"earlier plot"
        assert sorted(p.name for p in target.iterdir()) == [
            "logging.jsonl", PLOT_FILE, "sft_args.json"]


def test_sft_plots_its_losses_at_the_end(run_cli, tiny_plugin_file, identity_data, tmp_path):
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--split-dataset-ratio", "0.25",
                     "--max-steps", "2", "--batch-size", "2", "--gradient-accumulation-steps",
                     "1", "--logging-steps", "1", "--eval-steps", "1", "--output-dir",
                     tmp_path / "out")
    assert result.exit_code == 0, result.output
    run_dir = newest_run(tmp_path / "out", TINY_MODEL_TYPE)
    assert f"loss plot: {run_dir / PLOT_FILE}" in result.stderr
    assert (run_dir / PLOT_FILE).read_bytes().startswith(PNG_MAGIC)
    curves = loss_points(run_dir / "logging.jsonl")
    assert [step for step, _ in curves.train] == [1, 2]
    assert [step for step, _ in curves.eval] == [1, 2]
    # a checkpoint stands for its run
    assert run_cli("plot", run_dir / "checkpoint-2").stdout.strip() == str(run_dir / PLOT_FILE)
