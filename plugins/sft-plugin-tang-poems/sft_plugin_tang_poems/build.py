"""Rebuild data/Tang_testing_with_gt.jsonl: the 15 test prompts joined with their ground truth.

Run from anywhere: ``python -m sft_plugin_tang_poems.build``. The ground truth file holds one
poem a line with its phrases separated by tabs and no punctuation; the training outputs write
``phrase，phrase。`` per couplet, so tabs alternate between "，" and "。" and a "。" ends the poem.
"""

from __future__ import annotations

import json

from sft_plugin_tang_poems import GROUND_TRUTH_FILE, TESTING_FILE, TESTING_WITH_GT_FILE


def ground_truth_to_output(line: str) -> str:
    """``a\\tb\\tc\\td`` -> ``a，b。c，d。`` (the punctuation of the training outputs)."""
    phrases = line.strip().split("\t")
    return "".join(phrase + ("，" if index % 2 == 0 else "。")
                   for index, phrase in enumerate(phrases[:-1])) + phrases[-1] + "。"


def build_rows() -> list[dict[str, str]]:
    prompts = json.loads(TESTING_FILE.read_text(encoding="utf-8"))
    truths = [line for line in GROUND_TRUTH_FILE.read_text(encoding="utf-8").splitlines()
              if line.strip()]
    if len(prompts) != len(truths):
        raise ValueError(f"{len(prompts)} test prompts but {len(truths)} ground truth lines")
    return [{"instruction": prompt["instruction"], "input": prompt["input"],
             "output": ground_truth_to_output(truth)}
            for prompt, truth in zip(prompts, truths, strict=True)]


def main() -> None:
    rows = build_rows()
    TESTING_WITH_GT_FILE.write_text(
        "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    print(f"wrote {len(rows)} rows to {TESTING_WITH_GT_FILE}")


if __name__ == "__main__":
    main()
