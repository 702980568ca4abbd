"""ROUGE/BLEU against LLaMA-Factory's and ChatGLM-6B's own code and hand-computed values;
`sdk eval`."""

import json
from itertools import pairwise

import pytest

from conftest import REPO
from sdk.eval.metrics import METHODS, METRICS, average_scores, bleu_units, score_pair, words
from sdk.eval.predictions import metrics_file

TANG_GT = (REPO / "plugins" / "sft-plugin-tang-poems" / "sft_plugin_tang_poems" / "data"
           / "Tang_testing_with_gt.jsonl")


# The issue's example and pairs of every kind: case, Chinese, numbers, punctuation, runs of
# spaces, new lines, accents, emoji, an empty or blank response, one character.
MIXED = [
    ("The capital of France is Paris.", "Paris is the capital of France."),
    ("The cat sat on the mat", "the cat is on the mat"),
    ("床前明月光", "床前明月光，疑是地上霜。"),
    ("GPT-4 于2023年3月14日发布，价格是$20/月。",
     "GPT-4在 2023 年 3 月 14 日发布！价格：20 美元/月"),
    ("Hello, World!  Multiple   spaces\nand a new line.",
     "hello world! multiple spaces and a newline"),
    ("3.14159 ≈ π; e = 2.71828...", "π ≈ 3.14, e ≈ 2.718"),
    ("你好，世界！Hello, world!", "Hello, world! 你好，世界！"),
    ("ÜBER naïve café — résumé", "über naive cafe - resume"),
    ("😀 emoji 🎉", "emoji 😀"),
    ("a quick fox", "the lazy dog"),
    ("a", "a"),
    ("", "the lazy dog"),
    ("   ", "空白"),
]


def llama_factory_similarity(pairs):
    """LLaMA-Factory's ComputeSimilarity.__call__ (src/llamafactory/train/sft/metric.py at
    commit ff6d4d12eeb035d6ce06805a5733dd7b29f2ac30), its statements as written there from the
    decoded strings on, and its _dump's mean."""
    import jieba
    import numpy as np
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    score_dict = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in pairs:
        hypothesis = list(jieba.cut(pred))
        reference = list(jieba.cut(label))

        if len(" ".join(hypothesis).split()) == 0 or len(" ".join(reference).split()) == 0:
            result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
        else:
            rouge = Rouge()
            scores = rouge.get_scores(" ".join(hypothesis), " ".join(reference))
            result = scores[0]

        for k, v in result.items():
            score_dict[k].append(round(v["f"] * 100, 4))

        bleu_score = sentence_bleu([list(label)], list(pred),
                                   smoothing_function=SmoothingFunction().method3)
        score_dict["bleu-4"].append(round(bleu_score * 100, 4))
    return {k: float(np.mean(v)) for k, v in score_dict.items()}


def chatglm_compute_metrics(pairs):
    """ChatGLM-6B's compute_metrics (ptuning/main.py at commit
    401bf3a8a7dd8a26fba189551dccfc61a7079b4e), as written there from the decoded strings on.
    Rouge fails on an empty side: it is given none."""
    import jieba
    import numpy as np
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    score_dict = {"rouge-1": [], "rouge-2": [], "rouge-l": [], "bleu-4": []}
    for pred, label in pairs:
        hypothesis = list(jieba.cut(pred))
        reference = list(jieba.cut(label))
        rouge = Rouge()
        scores = rouge.get_scores(" ".join(hypothesis), " ".join(reference))
        result = scores[0]

        for k, v in result.items():
            score_dict[k].append(round(v["f"] * 100, 4))
        bleu_score = sentence_bleu([list(label)], list(pred),
                                   smoothing_function=SmoothingFunction().method3)
        score_dict["bleu-4"].append(round(bleu_score * 100, 4))

    for k, v in score_dict.items():
        score_dict[k] = float(np.mean(v))
    return score_dict


def without_method(scores):
    assert scores.pop("method") == "llama-factory"
    return scores


def test_the_issues_example_scores_as_llama_factory_prints_it():
    # jieba: The / capital / of / France / is / Paris / . against Paris / is / the / ... / .
    # ROUGE-1: 6 of 7 each side ("The" is not "the"); ROUGE-2: capital of, of France of 6;
    # ROUGE-L: LCS capital of France . = 4 of 7
    scores = score_pair("The capital of France is Paris.", "Paris is the capital of France.")
    assert scores == {"rouge-1": 85.7143, "rouge-2": 33.3333, "rouge-l": 57.1429,
                      "bleu-4": llama_factory_similarity([MIXED[0]])["bleu-4"]}


@pytest.mark.parametrize("pair", MIXED)
def test_each_pair_scores_as_llama_factory_scores_it(pair):
    assert score_pair(*pair) == pytest.approx(llama_factory_similarity([pair]), abs=1e-9)


def test_a_mixed_set_averages_as_llama_factory_and_chatglm_do():
    ours = without_method(average_scores(MIXED))
    assert ours == pytest.approx(llama_factory_similarity(MIXED), abs=1e-9)
    with_text = [(response, label) for response, label in MIXED if response.strip()]
    ours = without_method(average_scores(with_text))
    assert ours == pytest.approx(chatglm_compute_metrics(with_text), abs=1e-9)


def test_chinese_scores_equal_chatglms_on_the_tang_poems():
    poems = [json.loads(line)["output"] for line in open(TANG_GT, encoding="utf-8")]
    # each poem against its first half, and against the next poem
    pairs = [(poem[: len(poem) // 2], poem) for poem in poems]
    pairs += [(poem, other) for poem, other in pairwise(poems)]
    ours = without_method(average_scores(pairs))
    assert ours == pytest.approx(chatglm_compute_metrics(pairs), abs=1e-9)
    assert 20 < ours["rouge-1"] < 80 and ours["bleu-4"] > 0


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("text", ["床前明月光，疑是地上霜。举头望明月，低头思故乡。",
                                  "The quick brown fox jumps over the lazy dog."])
def test_identical_texts_score_100(text, method):
    assert score_pair(text, text, method) == dict.fromkeys(METRICS, 100.0)


@pytest.mark.parametrize("response, label, method", [
    ("白日依山尽", "黄河入海流", "llama-factory"), ("", "the lazy dog", "llama-factory"),
    ("白日依山尽", "黄河入海流", "words"), ("", "the lazy dog", "words"),
    # letters and spaces in common: only the words method scores 0
    ("a quick fox", "the lazy dog", "words")])
def test_disjoint_or_empty_responses_score_0(response, label, method):
    assert score_pair(response, label, method) == dict.fromkeys(METRICS, 0.0)


def test_the_words_method_by_hand():
    # words (lower-cased): the cat sat on the mat / the cat is on the mat
    # ROUGE-1 (rouge_chinese counts distinct n-grams): 4 of 5 each side -> 80
    # ROUGE-2: {the cat, on the, the mat} of 5 each side -> 60
    # ROUGE-L: LCS "the cat on the mat" = 5 of 6 -> 83.3333
    # BLEU-4: p1..p4 = 5/6, 3/5, 1/4, 0/3 -> method3 1/(2*3); BP 1;
    #         (5/6 * 3/5 * 1/4 * 1/6) ** (1/4) = (1/48) ** 0.25 = 0.379918
    assert score_pair("The cat sat on the mat", "the cat is on the mat", "words") == {
        "rouge-1": 80.0, "rouge-2": 60.0, "rouge-l": 83.3333, "bleu-4": 37.9918}
    assert score_pair("The capital of France is Paris.", "Paris is the capital of France.",
                      "words")["rouge-1"] == 100.0


def test_a_chinese_partial_match_by_hand():
    # jieba: 床前 / 明月光 against 床前 / 明月光 / ， / 疑是 / 地上 / 霜 / 。
    # ROUGE-1: P 2/2, R 2/7 -> F 4/9; ROUGE-2: P 1/1, R 1/6 -> F 2/7; ROUGE-L = ROUGE-1
    # BLEU-4 over characters: every n-gram of 5 matches; BP = exp(1 - 12/5) = 0.246597
    assert words("床前明月光") == ["床前", "明月光"]
    assert bleu_units("床前明月光 GPT-4") == ["床", "前", "明", "月", "光", "gpt", "-", "4"]
    expected = {"rouge-1": 44.4444, "rouge-2": 28.5714, "rouge-l": 44.4444, "bleu-4": 24.6597}
    for method in METHODS:
        assert score_pair("床前明月光", "床前明月光，疑是地上霜。", method) == expected


def test_averages_are_means_of_the_pair_scores():
    assert average_scores([("a b c d", "a b c d"), ("x", "y z")], "words") == {
        "method": "words", **dict.fromkeys(METRICS, 50.0)}
    assert average_scores([]) == {"method": "llama-factory", **dict.fromkeys(METRICS, 0.0)}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows),
                    encoding="utf-8")
    return path


def test_eval_prints_a_table_and_json(run_cli, tmp_path):
    pairs = [("The cat sat on the mat", "the cat is on the mat"),
             ("床前明月光", "床前明月光，疑是地上霜。")]
    path = write_rows(tmp_path / "predictions.jsonl", [
        {"query": f"q{n}", "response": response, "label": label}
        for n, (response, label) in enumerate(pairs)])
    result = run_cli("eval", "--predictions", path, "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)
    assert list(scores) == ["method", *METRICS]
    assert without_method(scores) == pytest.approx(llama_factory_similarity(pairs), abs=1e-9)
    table = run_cli("eval", "--predictions", path)
    assert table.stdout.splitlines() == ["metric   score", "method   llama-factory",
                                         "rouge-1  58.5859", "rouge-2  34.2857",
                                         "rouge-l  55.5556", "bleu-4   49.5243"]
    # the means of the words method's pair scores (by hand above)
    words_scores = json.loads(run_cli("eval", "--predictions", path, "--method", "words",
                                      "--json").stdout)
    assert words_scores == pytest.approx({"method": "words", "rouge-1": 62.2222,
                                          "rouge-2": 44.2857, "rouge-l": 63.88885,
                                          "bleu-4": 31.32575}, abs=1e-9)
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
