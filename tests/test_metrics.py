"""ROUGE/BLEU against hand-computed values and against ChatGLM's own formula; `sdk eval`."""

import json
from itertools import pairwise

import pytest

from conftest import REPO
from sdk.eval.metrics import METRICS, average_scores, bleu_units, score_pair, words
from sdk.eval.predictions import metrics_file

TANG_GT = (REPO / "plugins" / "sft-plugin-tang-poems" / "sft_plugin_tang_poems" / "data"
           / "Tang_testing_with_gt.jsonl")


@pytest.mark.parametrize("text", ["床前明月光，疑是地上霜。举头望明月，低头思故乡。",
                                  "The quick brown fox jumps over the lazy dog."])
def test_identical_texts_score_100(text):
    assert score_pair(text, text) == dict.fromkeys(METRICS, 100.0)


@pytest.mark.parametrize("response, label", [("白日依山尽", "黄河入海流"),
                                             ("a quick fox", "the lazy dog"),
                                             ("", "the lazy dog")])
def test_disjoint_or_empty_responses_score_0(response, label):
    assert score_pair(response, label) == dict.fromkeys(METRICS, 0.0)


def test_an_english_partial_match_by_hand():
    # words (lower-cased): the cat sat on the mat / the cat is on the mat
    # ROUGE-1 (rouge_chinese counts distinct n-grams): 4 of 5 each side -> 80
    # ROUGE-2: {the cat, on the, the mat} of 5 each side -> 60
    # ROUGE-L: LCS "the cat on the mat" = 5 of 6 -> 83.3333
    # BLEU-4: p1..p4 = 5/6, 3/5, 1/4, 0/3 -> method3 1/(2*3); BP 1;
    #         (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** 0.25 = 0.379918
    assert score_pair("The cat sat on the mat", "the cat is on the mat") == {
        "rouge-1": 80.0, "rouge-2": 60.0, "rouge-l": 83.3333, "bleu-4": 37.9918}


def test_a_chinese_partial_match_by_hand():
    # jieba: 床前 / 明月光 against 床前 / 明月光 / ， / 疑是 / 地上 / 霜 / 。
    # ROUGE-1: P 2/2, R 2/7 -> F 4/9; ROUGE-2: P 1/1, R 1/6 -> F 2/7; ROUGE-L = ROUGE-1
    # BLEU-4 over characters: every n-gram of 5 matches; BP = exp(1 - 12/5) = 0.246597
    assert words("床前明月光") == ["床前", "明月光"]
    assert bleu_units("床前明月光 GPT-4") == ["床", "前", "明", "月", "光", "gpt", "-", "4"]
    assert score_pair("床前明月光", "床前明月光，疑是地上霜。") == {
        "rouge-1": 44.4444, "rouge-2": 28.5714, "rouge-l": 44.4444, "bleu-4": 24.6597}


def chatglm_compute_metrics(pairs):
    """ChatGLM-6B ptuning/main.py compute_metrics, as written there (numpy mean left out)."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    score_dict = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in pairs:
        hypothesis = list(jieba.cut(pred))
        reference = list(jieba.cut(label))
        result = Rouge().get_scores(" ".join(hypothesis), " ".join(reference))[0]
        for k, v in result.items():
            score_dict[k].append(round(v["f"] * 100, 4))
        bleu_score = sentence_bleu([list(label)], list(pred),
                                   smoothing_function=SmoothingFunction().method3)
        score_dict["bleu-4"].append(round(bleu_score * 100, 4))
    return {k: sum(v) / len(v) for k, v in score_dict.items()}


def test_chinese_scores_equal_chatglms_on_the_tang_poems():
    poems = [json.loads(line)["output"] for line in open(TANG_GT, encoding="utf-8")]
    # each poem against its first half, and against the next poem
    pairs = [(poem[: len(poem) // 2], poem) for poem in poems]
    pairs += [(poem, other) for poem, other in pairwise(poems)]
    ours, theirs = average_scores(pairs), chatglm_compute_metrics(pairs)
    assert ours == pytest.approx(theirs, abs=1e-4)
    assert 20 < ours["rouge-1"] < 80 and ours["bleu-4"] > 0


def test_averages_are_means_of_the_pair_scores():
    assert average_scores([("a b c d", "a b c d"), ("x", "y z")]) == dict.fromkeys(METRICS, 50.0)
    assert average_scores([]) == dict.fromkeys(METRICS, 0.0)


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def test_eval_prints_a_table_and_json(run_cli, tmp_path):
    path = write_rows(tmp_path / "predictions.jsonl", [
        {"query": "q1", "response": "The cat sat on the mat", "label": "the cat is on the mat"},
        {"query": "q2", "response": "床前明月光", "label": "床前明月光，疑是地上霜。"}])
    result = run_cli("eval", "--predictions", path, "--json")
    assert result.exit_code == 0, result.output
    # the means of the two pairs above, each pair rounded first as ChatGLM does
    assert json.loads(result.stdout) == {"rouge-1": 62.2222, "rouge-2": 44.2857,
                                         "rouge-l": 63.8888, "bleu-4": 31.3257}
    table = run_cli("eval", "--predictions", path)
    assert table.stdout.splitlines() == ["metric   score", "rouge-1  62.2222",
                                         "rouge-2  44.2857", "rouge-l  63.8888",
                                         "bleu-4   31.3257"]
    assert metrics_file(path).name == "predictions.metrics.json"


def test_eval_scores_llama_factorys_generated_predictions(run_cli, tmp_path):
    pairs = [("The cat sat on the mat", "the cat is on the mat"), ("床前明月光", "床前明月光。")]
    ours = write_rows(tmp_path / "ours.jsonl", [{"response": r, "label": x} for r, x in pairs])
    theirs = write_rows(tmp_path / "generated_predictions.jsonl",
                        [{"prompt": "q", "predict": r, "label": x} for r, x in pairs])
    scores = [json.loads(run_cli("eval", "--predictions", path, "--json").stdout)
              for path in (ours, theirs)]
    assert scores[0] == scores[1] and scores[0]["rouge-1"] > 0


@pytest.mark.parametrize("lines, message", [
    (['{"response": "a", "label": "a"}', '{"response": "a", "label": "a"'],
     "predictions.jsonl:2: not valid JSON"),
    (['{"response": "a", "label": "a"}', '{"response": "a"}'],
     "predictions.jsonl:2: the row has no text 'label'"),
    (['["a", "b"]'], "predictions.jsonl:1: expected a JSON object, got list"),
    ([""], "holds no rows"),
])
def test_bad_predictions_files_are_named_with_their_line(run_cli, tmp_path, lines, message):
    path = tmp_path / "predictions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("eval", "--predictions", path)
    assert result.exit_code == 1 and message in result.stderr
    assert "Traceback" not in result.output


def test_a_missing_predictions_file_is_an_error(run_cli, tmp_path):
    result = run_cli("eval", "--predictions", tmp_path / "missing.jsonl")
    assert result.exit_code == 1
    assert "missing.jsonl' (--predictions) does not exist" in result.stderr
