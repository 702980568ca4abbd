"""Batch prediction on the tiny model: equal to one-at-a-time, left-padded, resumable,
the held-out rows of a run, and `sdk infer --dataset` / `sdk sft --predict-with-generate`."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import TINY_MODEL_TYPE
from sdk.config import InferArguments
from sdk.data.conversations import split_indices
from sdk.errors import SdkError
from sdk.eval.predictions import metrics_file
from sdk.infer.chat import generate
from sdk.infer.engine import Engine
from sdk.infer.load import load_for_inference
from sdk.infer.predict import (
    batch_inputs,
    generate_batch,
    padded_on_left,
    predict,
    prompt_rows,
    run_predict,
)
from sdk.templates.engine import Template
from sdk.testing import AnyTunerArguments
from sdk.train.sft import run_sft

QUESTIONS = ["Hi", "Who are you and what do you do all day?", "床前明月光",
             "Tell me a joke about cats, please.", "x"]
# A random model repeats one token; the penalty makes its replies differ token by token.
DECODING = dict(max_new_tokens=6, repetition_penalty=2.0)


@pytest.fixture
def loaded(plugin_set, tiny_model_dir):
    args = InferArguments(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir))
    return load_for_inference(args, plugin_set.registry)


def conversations(count: int = 5):
    return [[{"role": "user", "content": question},
             {"role": "assistant", "content": f"answer {number}"}]
            for number, question in enumerate(QUESTIONS[:count])]


def counting_prefills(monkeypatch):
    """Record how many rows the engine prefills together, each time it does."""
    calls, original = [], Engine.prefill

    def prefill_and_count(engine, joining):
        calls.append(len(joining))
        return original(engine, joining)

    monkeypatch.setattr(Engine, "prefill", prefill_and_count)
    return calls


def test_batches_are_padded_on_the_left(loaded):
    _, tokenizer, template = loaded
    prompts = [[{"role": "user", "content": q}] for q in ("Hi", "Tell me a joke, please.")]
    with padded_on_left(tokenizer):
        batch = batch_inputs(tokenizer, template, prompts)
    short = template.tokenize_prompt(tokenizer, prompts[0])["input_ids"][0].tolist()
    padding = batch["input_ids"].shape[1] - len(short)
    assert padding > 0
    assert batch["input_ids"][0].tolist() == [tokenizer.pad_token_id] * padding + short
    assert batch["attention_mask"][0].tolist() == [0] * padding + [1] * len(short)
    assert batch["attention_mask"][1].tolist() == [1] * batch["input_ids"].shape[1]
    assert tokenizer.padding_side == "right"  # given back as it was


def test_batched_replies_equal_one_at_a_time(loaded):
    model, tokenizer, template = loaded
    args = InferArguments(**DECODING)
    prompts = [[{"role": "user", "content": question}] for question in QUESTIONS]
    one_at_a_time = [generate(model, tokenizer, template, prompt, args) for prompt in prompts]
    assert generate_batch(model, tokenizer, template, prompts, args) == one_at_a_time
    assert len(set(one_at_a_time)) >= 3  # the prompts steer the replies


def test_rows_keep_system_history_query_and_label():
    rows = prompt_rows([[{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello"},
                         {"role": "user", "content": "Who are you?"},
                         {"role": "assistant", "content": "Tiny."}],
                        [{"role": "user", "content": "Unanswered"}]])
    assert rows[0].written("reply") == {
        "system": "Be brief.",
        "history": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        "query": "Who are you?", "response": "reply", "label": "Tiny."}
    assert rows[1].written("reply") == {"query": "Unanswered", "response": "reply",
                                        "label": None}
    with pytest.raises(SdkError, match="Row 1 of the data does not end with a user message"):
        prompt_rows([[{"role": "assistant", "content": "Hello"}]])
    with pytest.raises(SdkError, match="Row 1 of the data ends with a tool call, which "
                                       "predictions cannot score as text yet"):
        prompt_rows([[{"role": "user", "content": "Time?"},
                      {"role": "assistant", "content": "", "tool_calls": CALLS}]])


CALLS = json.dumps([{"type": "function", "id": "call00001",
                     "function": {"name": "now", "arguments": {}}}])
TOOL_ROW = [{"role": "user", "content": "Time?", "tool_call_id": None,
             "tools": json.dumps([{"type": "function", "function": {"name": "now"}}])},
            {"role": "assistant", "content": "", "tool_calls": CALLS},
            {"role": "tool", "content": "12:00", "tool_call_id": "call00001"},
            {"role": "assistant", "content": "It is noon."},
            {"role": "user", "content": "Thanks!"},
            {"role": "assistant", "content": "You are welcome."}]


def test_a_tool_row_is_prompted_with_its_schemas_calls_and_results(loaded, plugin_set,
                                                                    tmp_path, monkeypatch):
    """The prompt is the template's tool rendering (Qwen2.5's <tools>, <tool_call> and
    <tool_response>), and the predictions file keeps the schemas and the calls; a template
    without a tool format refuses the row before anything is generated."""
    model, tokenizer, chatml = loaded
    calls = counting_prefills(monkeypatch)
    args = InferArguments(max_new_tokens=2)
    rows = prompt_rows([conversations(1)[0], TOOL_ROW])
    with pytest.raises(SdkError, match="Row 2 of the data cannot be prompted with template "
                                       "'chatml': it uses tools .* has no tool format"):
        predict(rows, tmp_path / "refused.jsonl", lambda: loaded, args, "tiny")
    assert calls == []
    template = Template.for_tokenizer(plugin_set.registry.get("templates", "qwen2.5"),
                                      tokenizer)
    prompts, original = [], template.tokenize_prompt
    template.tokenize_prompt = lambda tokenizer, messages: (
        prompts.append(messages) or original(tokenizer, messages))
    path = tmp_path / "predictions.jsonl"
    predict(rows[1:], path, lambda: (model, tokenizer, template), args, "tiny")
    assert calls == [1]
    # Arrow's empty fields (None) are left out
    assert prompts == [[{key: value for key, value in message.items() if value is not None}
                        for message in TOOL_ROW[:-1]]]
    assert "<tool_response>\n12:00\n</tool_response>" in template.render(prompts[0], True)
    written = json.loads(path.read_text(encoding="utf-8"))
    assert written["tools"] == [{"type": "function", "function": {"name": "now"}}]
    assert written["history"][:2] == [
        {"role": "user", "content": "Time?"},
        {"role": "assistant", "content": "", "tool_calls": json.loads(CALLS)}]
    assert (written["query"], written["label"]) == ("Thanks!", "You are welcome.")
    predict(rows[1:], path, lambda: (model, tokenizer, template), args, "tiny")  # all there
    assert calls == [1]


def test_a_stopped_run_resumes_without_generating_finished_rows(loaded, tmp_path,
                                                                monkeypatch):
    model = loaded[0]
    calls = counting_prefills(monkeypatch)
    rows = prompt_rows(conversations())
    path = tmp_path / "out" / "predictions.jsonl"
    args = InferArguments(batch_size=2, **DECODING)

    scores = predict(rows, path, lambda: loaded, args, "tiny")
    assert calls == [2, 2, 1]
    complete = path.read_bytes()
    lines = complete.decode().splitlines()
    assert [json.loads(line)["query"] for line in lines] == QUESTIONS
    assert json.loads(metrics_file(path).read_text()) == scores
    assert set(scores) == {"method", "rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    assert scores["method"] == "llama-factory"

    # stopped while writing row 4: three whole lines and part of the fourth
    cut = len("\n".join(lines[:3])) + 1 + len(lines[3]) // 2
    path.write_bytes(complete[:len(complete.decode()[:cut].encode())])
    calls.clear()
    predict(rows, path, lambda: loaded, args, "tiny")
    assert calls == [2]  # rows 4 and 5 only
    assert path.read_bytes() == complete  # greedy: the same rows again, rows 1-3 untouched

    def must_not_load():
        raise AssertionError("a finished file needs no model")

    assert predict(rows, path, must_not_load, args, "tiny") == scores

    # the same file asked of another model, or with other settings: refused, file untouched
    for model, changed in [("another", args), ("tiny", InferArguments(**{
            **{name: getattr(args, name) for name in ("batch_size", *DECODING)},
            "max_new_tokens": args.max_new_tokens + 1}))]:
        with pytest.raises(SdkError, match="holds replies made with other settings"):
            predict(rows, path, must_not_load, changed, model)
    assert path.read_bytes() == complete
    with pytest.raises(SdkError, match="is a folder"):
        predict(rows, tmp_path, must_not_load, args, "tiny")


def test_a_last_row_missing_only_its_newline_is_kept(loaded, tmp_path):
    rows = prompt_rows(conversations(2))
    path = tmp_path / "predictions.jsonl"
    args = InferArguments(batch_size=2, **DECODING)
    predict(rows, path, lambda: loaded, args, "tiny")
    complete = path.read_bytes()
    path.write_bytes(complete[:-1])
    predict(rows, path, lambda: pytest.fail("nothing to generate"), args, "tiny")
    assert path.read_bytes() == complete


def test_a_file_of_other_predictions_is_not_resumed(loaded, tmp_path):
    path = tmp_path / "predictions.jsonl"
    args = InferArguments(**DECODING)
    predict(prompt_rows(conversations(2)), path, lambda: loaded, args, "tiny")
    before = path.read_bytes()
    other = prompt_rows([[{"role": "user", "content": "Something else"}]])
    with pytest.raises(SdkError, match=r"predictions.jsonl:1 is not the prediction of row 1"):
        predict(other, path, lambda: loaded, args, "tiny")
    assert path.read_bytes() == before


def test_infer_dataset_writes_predictions_and_metrics(run_cli, tiny_plugin_file, tiny_model_dir,
                                                      identity_data, tmp_path):
    out = tmp_path / "predictions.jsonl"
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--model-id-or-path", tiny_model_dir, "--dataset", identity_data,
                     "--predictions-file", out, "--batch-size", "3", "--max-new-tokens", "4")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["query"] for row in rows] == ["Who are you?", "What is your name?",
                                              "Introduce yourself.", "Your name?"]
    assert all(row["label"] == "I am Tiny, made by the tests." for row in rows)
    assert all(isinstance(row["response"], str) for row in rows)
    assert "[sdk] metrics (llama-factory): rouge-1 " in result.stderr
    evaluated = run_cli("eval", "--predictions", out, "--json")
    assert json.loads(evaluated.stdout) == json.loads(metrics_file(out).read_text())


@pytest.mark.parametrize("flags, message", [
    (["--dataset", "x.jsonl", "--val-dataset-from-run"], "not both"),
    (["--val-dataset-from-run"], "give the run's checkpoint with --ckpt-dir"),
    (["--dataset", "{data}", "--model-type", TINY_MODEL_TYPE], "Give --predictions-file"),
    (["--dataset", "{data}", "--query", "Hi"], "--query asks one question"),
])
def test_infer_dataset_flag_errors(run_cli, tiny_plugin_file, identity_data, flags, message):
    flags = [flag.replace("{data}", str(identity_data)) for flag in flags]
    result = run_cli("--plugin", tiny_plugin_file, "infer", *flags)
    assert result.exit_code == 1 and message in result.stderr, result.output


def train(plugin_set, data, tmp_path, **overrides):
    settings = dict(model_type=TINY_MODEL_TYPE, dataset=[str(data)], max_steps=1, batch_size=2,
                    gradient_accumulation_steps=1, save_steps=1, seed=0,
                    output_dir=str(tmp_path / "output"))
    return run_sft(AnyTunerArguments(**{**settings, **overrides}), plugin_set.registry)


@pytest.mark.slow
def test_sft_predicts_the_held_out_rows_and_infer_finds_them(plugin_set, tmp_path):
    data = tmp_path / "questions.jsonl"
    questions = [f"Question number {n}?" for n in range(8)]
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "I am Tiny."}]}) + "\n" for question in questions))
    result = train(plugin_set, data, tmp_path, split_dataset_ratio=0.25,
                   predict_with_generate=True, max_new_tokens=8)

    path = result.run_dir / "predictions" / f"{result.checkpoint.name}-val.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    _, held_out = split_indices(len(questions), 0.25, seed=0)
    assert [row["query"] for row in rows] == [questions[i] for i in held_out]
    assert json.loads(metrics_file(path).read_text())["rouge-1"] >= 0
    before = path.read_bytes()

    # the same rows, found again from the checkpoint's sft_args.json: nothing to generate
    args = InferArguments(ckpt_dir=str(result.run_dir), val_dataset_from_run=True,
                          max_new_tokens=8)
    registry = plugin_set.registry
    assert run_predict(args, registry) == json.loads(metrics_file(path).read_text())
    assert path.read_bytes() == before
    # and they are generated the same way from scratch
    path.unlink()
    run_predict(InferArguments(**{**vars(args), "batch_size": 1}), registry)
    assert path.read_bytes() == before


def test_predict_with_generate_needs_held_out_rows(plugin_set, identity_data, tmp_path):
    with pytest.raises(SdkError, match="--predict-with-generate predicts the held-out rows"):
        train(plugin_set, identity_data, tmp_path, predict_with_generate=True)
    assert not (tmp_path / "output").exists()  # refused before anything was loaded or written


def test_val_dataset_from_run_needs_a_run_that_held_rows_out(plugin_set, identity_data,
                                                            tmp_path):
    result = train(plugin_set, identity_data, tmp_path)
    args = InferArguments(ckpt_dir=str(result.run_dir), val_dataset_from_run=True)
    with pytest.raises(SdkError, match="held out no rows"):
        run_predict(args, plugin_set.registry)


def test_rows_without_a_reply_are_predicted_but_not_scored(loaded, tmp_path):
    path = tmp_path / "predictions.jsonl"
    rows = prompt_rows([[{"role": "user", "content": "Who are you?"}]])
    assert predict(rows, path, lambda: loaded, InferArguments(**DECODING), "tiny") is None
    assert json.loads(path.read_text())["label"] is None
    assert not metrics_file(path).exists()


def test_a_row_past_the_models_window_stops_prediction_keeping_the_rows_before(loaded,
                                                                             tmp_path):
    window = loaded[0].config.max_position_embeddings
    rows = prompt_rows([*conversations(2), [{"role": "user", "content": "word " * window}]])
    path = tmp_path / "predictions.jsonl"
    with pytest.raises(SdkError, match=f"Row 3: The prompt is .* within {window} .* The "
                                       f"replies to the rows before its batch are in {path}"):
        predict(rows, path, lambda: loaded, InferArguments(batch_size=2, **DECODING), "tiny")
    assert [json.loads(line)["query"] for line in path.read_text().splitlines()] == QUESTIONS[:2]


def test_each_row_of_a_batch_stops_at_the_window_after_its_own_prompt(loaded, monkeypatch):
    model, tokenizer, template = loaded
    window = model.config.max_position_embeddings
    near_the_end = [{"role": "user", "content": "word " * (window - 30)}]
    short = [{"role": "user", "content": QUESTIONS[1]}]
    args = InferArguments(max_new_tokens=40, repetition_penalty=2.0)
    alone = generate_batch(model, tokenizer, template, [short], args)
    calls = counting_prefills(monkeypatch)
    together = generate_batch(model, tokenizer, template, [short, near_the_end], args)
    assert calls == [2] and together[0] == alone[0]  # not cut to the long row's room
    long_tokens = len(tokenizer(together[1], add_special_tokens=False)["input_ids"])
    assert 0 < long_tokens < 40


def test_truncate_long_prompts_cuts_the_start_of_a_prompt_past_the_window(loaded, tmp_path,
                                                                        capsys):
    model, tokenizer, template = loaded
    window = model.config.max_position_embeddings
    long_prompt = [{"role": "user", "content": "word " * window + "last words here"}]
    near_the_end = [{"role": "user", "content": "word " * (window - 30)}]  # fits: not cut
    rows = prompt_rows([*conversations(2), [*long_prompt, {"role": "assistant",
                                                           "content": "answer"}],
                        near_the_end])
    path, in_one_go = tmp_path / "predictions.jsonl", tmp_path / "in-one-go.jsonl"
    args = InferArguments(batch_size=2, **DECODING)
    cutting = dataclasses.replace(args, truncate_long_prompts=True)
    with pytest.raises(SdkError, match="or rerun with --truncate-long-prompts true"):
        predict(rows, path, lambda: loaded, args, "tiny")
    capsys.readouterr()
    # the stopped file is finished with the flag: the rows that fit are as they were
    predict(rows, path, lambda: loaded, cutting, "tiny")
    tokens = template.tokenize_prompt(tokenizer, long_prompt)["input_ids"]
    kept = window - DECODING["max_new_tokens"]
    err = capsys.readouterr().err
    assert (f"[sdk] row 3: the prompt's first {tokens.shape[1] - kept} of {tokens.shape[1]} "
            "tokens cut (--truncate-long-prompts).") in err
    assert "row 4" not in err
    predict(rows, in_one_go, lambda: loaded, cutting, "tiny")
    assert path.read_text() == in_one_go.read_text()
    written = [json.loads(line) for line in path.read_text().splitlines()]
    assert [row["query"] for row in written[:2]] == QUESTIONS[:2] and len(written) == 4
    # the reply is what the prompt's last tokens alone give
    output = model.generate(input_ids=tokens[:, -kept:],
                            attention_mask=torch.ones_like(tokens[:, -kept:]), do_sample=False,
                            max_new_tokens=DECODING["max_new_tokens"],
                            repetition_penalty=DECODING["repetition_penalty"])
    assert written[2]["response"] == tokenizer.decode(output[0, kept:],
                                                      skip_special_tokens=True).strip()


def test_a_cut_prompt_keeps_half_the_window_when_the_reply_would_take_more(loaded, capsys):
    model, tokenizer, template = loaded
    window = model.config.max_position_embeddings
    long_prompt = [{"role": "user", "content": "word " * window}]
    length = template.tokenize_prompt(tokenizer, long_prompt)["input_ids"].shape[1]
    args = InferArguments(max_new_tokens=window, truncate_long_prompts=True)
    generate_batch(model, tokenizer, template, [long_prompt], args)
    assert (f"the prompt's first {length - window // 2} of {length} tokens cut"
            in capsys.readouterr().err)


@pytest.mark.slow
def test_sft_stopped_at_a_long_held_out_prompt_names_the_command_that_finishes(
        plugin_set, tiny_plugin_file, tiny_model_dir, tmp_path, run_cli):
    window = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    data = tmp_path / "questions.jsonl"
    questions = [f"Question number {n}?" for n in range(7)] + ["word " * window]
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "I am Tiny."}]}) + "\n" for question in questions))
    with pytest.raises(SdkError, match=r"finish the file with `sdk infer --ckpt-dir (\S+) "
                                       r"--val-dataset-from-run true --max-new-tokens 8 "
                                       r"--truncate-long-prompts true`") as stopped:
        train(plugin_set, data, tmp_path, val_dataset=[str(data)], max_new_tokens=8,
              predict_with_generate=True, max_length=32)
    command = re.search(r"`sdk (infer .*?)`", str(stopped.value)).group(1).split()
    result = run_cli("--plugin", tiny_plugin_file, *command)
    assert result.exit_code == 0, result.output
    checkpoint = Path(command[2])
    written = (checkpoint.parent / "predictions" / f"{checkpoint.name}-val.jsonl").read_text()
    assert len(written.splitlines()) == len(questions)


def test_a_padded_batch_gets_no_reminder_about_the_window(loaded, monkeypatch):
    # the left padding counts toward the length transformers checks, not toward any row's
    # positions: each row stops at the window after its own prompt (test above)
    import logging

    model, tokenizer, template = loaded
    window = model.config.max_position_embeddings
    logger = logging.getLogger("transformers.generation.stopping_criteria")
    monkeypatch.setattr(logger, "filters", [])
    logging.Logger.warning_once.cache_clear()  # transformers warns once a process
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        generate_batch(model, tokenizer, template,
                       [[{"role": "user", "content": "Hi"}],
                        [{"role": "user", "content": "word " * (window - 30)}]],
                       InferArguments(max_new_tokens=40, repetition_penalty=2.0))
    finally:
        logger.removeHandler(handler)
    assert not [record for record in records if "maximum length" in record.getMessage()]
