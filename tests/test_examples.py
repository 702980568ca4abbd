"""The example scripts under examples/, run as a user runs them: bash, `sdk` on PATH."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TANG_POEMS = REPO / "examples" / "tang_poems" / "run.sh"
METRICS = {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}


def run_script(script: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script)], cwd=REPO, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


def test_tang_poems_says_how_to_get_sdk_when_it_is_not_on_path(tmp_path):
    result = run_script(TANG_POEMS, {"PATH": "/usr/bin:/bin", "OUTPUT_DIR": str(tmp_path)}, 30)
    assert result.returncode == 1
    assert "the 'sdk' command is not on PATH" in result.stderr
    assert "make install" in result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_tang_poems_runs_before_training_and_after(tmp_path):
    venv_bin = str(Path(sys.executable).parent)
    tiny = {"PATH": f"{venv_bin}:{os.environ['PATH']}", "OUTPUT_DIR": str(tmp_path),
            "ROWS": "4", "BATCH_SIZE": "2", "GRADIENT_ACCUMULATION_STEPS": "1", "MAX_STEPS": "1",
            "TEST_ROWS": "2", "MAX_NEW_TOKENS": "8", "SAMPLES": "2",
            # Batches this small gain nothing from a second thread, and on a busy CPU the
            # threads wait on each other: 50 s instead of 2 min here.
            "OMP_NUM_THREADS": "1"}
    result = run_script(TANG_POEMS, tiny, 300)
    assert result.returncode == 0, result.stderr[-3000:]

    (work,) = tmp_path.iterdir()
    for name in ("before", "after"):
        predictions = (work / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        assert len(predictions) == 2
        scores = json.loads((work / f"{name}.metrics.json").read_text())
        assert scores.pop("method") == "llama-factory"
        assert set(scores) == METRICS and all(0 <= v <= 100 for v in scores.values())
    (checkpoint,) = work.glob("smollm2-135m-instruct/v*/checkpoint-1")
    assert (checkpoint / "adapter_model.safetensors").is_file()

    out = result.stdout
    assert "| metric  | before | after  |" in out
    for metric in METRICS:
        assert f"| {metric:<7} |" in out
    assert out.count("  before:") == 2 and out.count("  after:") == 2
    assert out.count("  ground truth:") == 2
    assert f"Chat with the fine-tuned model: sdk infer --ckpt-dir {checkpoint.parent}" in out
