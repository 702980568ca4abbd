"""ROUGE-1/2/L and BLEU-4 of generated replies against their references, computed as the
ChatGLM-6B fine-tuning evaluation does (ptuning/main.py ``compute_metrics``, also used by
ChatGLM-Efficient-Tuning and LLaMA-Factory), so scores compare with the numbers those tools
report:

- ROUGE: ``rouge_chinese.Rouge().get_scores`` on the jieba words joined by spaces, F-scores.
- BLEU-4: nltk ``sentence_bleu`` with ``SmoothingFunction().method3`` over characters for
  Chinese (ChatGLM's ``list(text)``) and over words for other scripts.
- Each pair's score is x100 and rounded to 4 decimals; a set's score is the mean of those.

Words are jieba's segmentation (it keeps English words whole) lower-cased, whitespace left
out. A pair where either side has no word scores 0, as in LLaMA-Factory (rouge_chinese
refuses empty text).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import cache

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
# CJK ideographs: BLEU counts them one character at a time, as ChatGLM's eval does.
_CJK = re.compile(r"[\u2e80-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f]")


@cache
def _jieba():
    import jieba

    jieba.setLogLevel(logging.WARNING)  # else it logs its dictionary loading on stderr
    return jieba


def words(text: str) -> list[str]:
    """jieba's words of ``text``, lower-cased, without whitespace."""
    return [word.lower() for word in _jieba().cut(text) if word.strip()]


def bleu_units(text: str) -> list[str]:
    """What BLEU counts: each Chinese character, each other word."""
    units: list[str] = []
    for word in words(text):
        units.extend(word if _CJK.search(word) else [word])
    return units


def score_pair(response: str, label: str) -> dict[str, float]:
    """The four scores (0-100) of one generated ``response`` against its reference."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hypothesis, reference = words(response), words(label)
    if hypothesis and reference:
        rouge = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        scores = {name: rouge[name]["f"] for name in ("rouge-1", "rouge-2", "rouge-l")}
    else:
        scores = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    scores["bleu-4"] = sentence_bleu([bleu_units(label)], bleu_units(response),
                                     smoothing_function=SmoothingFunction().method3)
    return {name: round(float(value) * 100, 4) for name, value in scores.items()}


def average_scores(pairs: Iterable[tuple[str, str]]) -> dict[str, float]:
    """The mean of each score over (response, label) pairs; 0 for no pairs."""
    totals = dict.fromkeys(METRICS, 0.0)
    count = 0
    for response, label in pairs:
        for name, value in score_pair(response, label).items():
            totals[name] += value
        count += 1
    return {name: round(total / count, 4) if count else 0.0 for name, total in totals.items()}
