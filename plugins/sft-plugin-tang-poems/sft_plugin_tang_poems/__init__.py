"""Tang poem completion data (traditional Chinese): given a poem's first couplet, write the
rest. The GenAI HW5 (Spring 2024) set, built from the chinese-poetry project (MIT); see
data/README.md."""

from __future__ import annotations

from pathlib import Path

from sdk import hookimpl
from sdk.specs import DatasetSpec

DATA_DIR = Path(__file__).parent / "data"
TRAINING_FILE = DATA_DIR / "Tang_training_data.json"
TESTING_FILE = DATA_DIR / "Tang_testing_data.json"  # the 15 test prompts, no output
GROUND_TRUTH_FILE = DATA_DIR / "Tang_testing_gt.txt"  # one poem a line, phrases tab-separated
# The test prompts with their ground truth as output, made by sft_plugin_tang_poems.build.
TESTING_WITH_GT_FILE = DATA_DIR / "Tang_testing_with_gt.jsonl"


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="tang-poems",
        files=(str(TRAINING_FILE),),
        format="alpaca",
        license="MIT",
        description="5001 Tang poems (traditional Chinese): first couplet in, rest of the poem out",
    ))
    register(DatasetSpec(
        name="tang-poems-test",
        files=(str(TESTING_WITH_GT_FILE),),
        format="alpaca",
        license="MIT",
        description="The 15 Tang poem test prompts with their ground truth as output",
    ))
