"""ROUGE-1/2/L and BLEU-4 of generated replies against their references.

The default method, ``llama-factory``, is LLaMA-Factory's ``ComputeSimilarity``
(src/llamafactory/train/sft/metric.py), itself ChatGLM-6B's ``compute_metrics``
(ptuning/main.py), statement for statement (ChatGLM-Efficient-Tuning's ``ComputeMetrics`` has
the same ones), so a set's numbers are the ones those tools print for it, in any language:

- ROUGE: ``rouge_chinese.Rouge().get_scores`` on ``" ".join(jieba.cut(text))``, F-scores;
  case counts ("The" is not "the"). A pair where a side has no word scores 0 (LLaMA-Factory's
  rule; ChatGLM-6B fails there).
- BLEU-4: nltk ``sentence_bleu([list(label)], list(pred))`` with
  ``SmoothingFunction().method3``: over characters, spaces included, in every script.
- Each pair's score is x100 and rounded to 4 decimals; a set's score is their mean.

``words`` is the same ROUGE on lower-cased words and BLEU-4 over words (Chinese characters
one by one, whitespace left out): for English it scores words rather than letters and ignores
case, as English ROUGE/BLEU tools usually do, but its numbers compare with no other tool's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from functools import cache
from statistics import fmean

METRICS = ("rouge-1", "rouge-2", "rouge-l", "bleu-4")
METHODS = ("llama-factory", "words")
# CJK ideographs: the words method counts them one character at a time for BLEU.
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
    """What the words method's BLEU counts: each Chinese character, each other word."""
    units: list[str] = []
    for word in words(text):
        units.extend(word if _CJK.search(word) else [word])
    return units


def score_pair(response: str, label: str, method: str = "llama-factory") -> dict[str, float]:
    """The four scores (0-100) of one generated ``response`` against its reference."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    if method == "llama-factory":
        hypothesis, reference = list(_jieba().cut(response)), list(_jieba().cut(label))
        bleu_hypothesis, bleu_reference = list(response), list(label)
    elif method == "words":
        hypothesis, reference = words(response), words(label)
        bleu_hypothesis, bleu_reference = bleu_units(response), bleu_units(label)
    else:
        raise ValueError(f"Unknown metrics method {method!r}; one of {', '.join(METHODS)}.")
    hypothesis_text, reference_text = " ".join(hypothesis), " ".join(reference)
    if hypothesis_text.split() and reference_text.split():
        rouge = Rouge().get_scores(hypothesis_text, reference_text)[0]
        scores = {name: rouge[name]["f"] for name in ("rouge-1", "rouge-2", "rouge-l")}
    else:
        scores = {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    scores["bleu-4"] = sentence_bleu([bleu_reference], bleu_hypothesis,
                                     smoothing_function=SmoothingFunction().method3)
    return {name: round(float(value) * 100, 4) for name, value in scores.items()}


def average_scores(pairs: Iterable[tuple[str, str]],
                   method: str = "llama-factory") -> dict[str, float | str]:
    """``{"method": method, metric: mean of the pairs' scores}``, the metrics file's content;
    each mean is 0 for no pairs."""
    per_pair = [score_pair(response, label, method) for response, label in pairs]
    return {"method": method,
            **{name: fmean(scores[name] for scores in per_pair) if per_pair else 0.0
               for name in METRICS}}
