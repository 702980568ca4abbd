"""`sdk infer` as a chat: REPL commands, generation flags, stop words, --merge-lora, and the
three things it answers from (a checkpoint, an export, a model type)."""

import dataclasses
import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import TINY_MODEL_TYPE, TOKENIZERS
from sdk.config import InferArguments
from sdk.infer.chat import generate, generation_options
from sdk.infer.load import load_for_inference
from sdk.infer.stops import finish_reply
from sdk.templates.builtin import CHATML
from sdk.templates.engine import Template
from sdk.testing import AnyTunerArguments
from sdk.train.sft import run_sft

USER = [{"role": "user", "content": "Who are you?"}]


@pytest.fixture
def prompts(monkeypatch):
    """The prompts the model is asked, as rendered text, in order."""
    seen = []
    encode = Template.tokenize_prompt

    def recording(self, tokenizer, messages):
        seen.append(self.render(messages, add_generation_prompt=True))
        return encode(self, tokenizer, messages)

    monkeypatch.setattr(Template, "tokenize_prompt", recording)
    return seen


@pytest.fixture
def tiny(tiny_model_dir):
    return (AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(),
            AutoTokenizer.from_pretrained(tiny_model_dir))


def recorded_generate(model, calls):
    """``model.generate`` that also keeps its keyword arguments and output."""
    original = model.generate

    def generate_and_keep(**options):
        output = original(**options)
        calls.append((options, output))
        return output

    model.generate = generate_and_keep


def train_lora(plugin_set, identity_data, tmp_path, **overrides):
    settings = dict(model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)],
                    output_dir=str(tmp_path / "output"), max_steps=2, batch_size=2,
                    gradient_accumulation_steps=1, learning_rate=1e-2, warmup_ratio=0.0)
    return run_sft(AnyTunerArguments(**{**settings, **overrides}), plugin_set.registry)


def test_chat_commands_change_history_and_system_prompt(run_cli, tiny_plugin_file, prompts):
    typed = ["Hi", "system You are Ferret.", "Who are you?", "clear", "And now?", "system",
             "help", "SYSTEM", "quit", "never sent"]
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--max-new-tokens", "2", input="\n".join(typed) + "\n")
    assert result.exit_code == 0, result.output
    ferret = "<|im_start|>system\nYou are Ferret.<|im_end|>\n"
    assert prompts == [
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        # the new system prompt, and the first exchange forgotten
        ferret + "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n",
        ferret + "<|im_start|>user\nAnd now?<|im_end|>\n<|im_start|>assistant\n",
    ]
    assert result.stderr.count(">>> ") == 3
    assert "(system prompt set, history cleared)" in result.stderr
    assert "(history cleared)" in result.stderr
    assert result.stderr.count("system: You are Ferret.") == 2  # `system`, `SYSTEM`
    assert "system TEXT   use TEXT as the system prompt" in result.stderr


def test_the_history_reaches_the_next_prompt_and_system_alone_shows_none(
        run_cli, tiny_plugin_file, prompts):
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--max-new-tokens", "2", "--stream", "false", input="Hi\nsystem\nBye\n")
    assert result.exit_code == 0, result.output
    first_reply = result.stdout.split("\n")[0]
    assert prompts[1] == (f"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
                          f"{first_reply}<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
                          "<|im_start|>assistant\n")
    assert "(no system prompt)" in result.stderr


def test_piped_stdout_holds_only_the_replies(run_cli, tiny_plugin_file, tiny):
    model, tokenizer = tiny
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--max-new-tokens", "4", input="Who are you?\nclear\nWho are you?\n")
    assert result.exit_code == 0, result.output
    reply = generate(model, tokenizer, Template(CHATML), USER, InferArguments(max_new_tokens=4))
    # streamed as generated, the prompts on stderr
    assert [line.strip() for line in result.stdout.splitlines()] == [reply, reply]
    assert result.stderr.count("<<< ") == 4 and result.stderr.count(">>> ") == 2


def test_a_model_type_answers_one_query(run_cli, tiny_plugin_file, tiny):
    model, tokenizer = tiny
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--query", "Who are you?", "--max-new-tokens", "6", "--stream", "false")
    assert result.exit_code == 0, result.output
    expected = generate(model, tokenizer, Template(CHATML), USER, InferArguments(max_new_tokens=6))
    assert expected and result.stdout.strip() == expected


def test_beam_and_ngram_flags_reach_generate(tiny):
    model, tokenizer = tiny
    calls = []
    recorded_generate(model, calls)
    args = InferArguments(max_new_tokens=24, num_beams=3, no_repeat_ngram_size=1)
    generate(model, tokenizer, Template(CHATML), USER, args)
    options, output = calls[-1]
    assert options["num_beams"] == 3 and options["no_repeat_ngram_size"] == 1

    def new_tokens(**flags):
        generate(model, tokenizer, Template(CHATML), USER,
                 dataclasses.replace(args, num_beams=1, **flags))
        options, output = calls[-1]
        return output[0, options["input_ids"].shape[1]:].tolist()

    repeating = new_tokens(no_repeat_ngram_size=0)
    assert len(set(repeating)) < len(repeating)  # the random model repeats itself...
    unique = new_tokens(no_repeat_ngram_size=1)
    assert len(set(unique)) == len(unique)  # ...and never does with 1-grams banned


def test_beam_search_answers_without_streaming(run_cli, tiny_plugin_file, tiny):
    model, tokenizer = tiny
    typed = "Who are you?\nclear\nWho are you?\n"
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--num-beams", "2", "--max-new-tokens", "6", input=typed)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("cannot stream") == 1
    beams = generate(model, tokenizer, Template(CHATML), USER,
                     InferArguments(max_new_tokens=6, num_beams=2))
    assert result.stdout == f"{beams}\n" * 2


def test_the_templates_stop_words_end_a_reply():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    options, stop_strings = generation_options(Template.for_tokenizer(CHATML, tokenizer),
                                               tokenizer, InferArguments())
    assert im_end in options["eos_token_id"] and stop_strings == []
    several_tokens = dataclasses.replace(CHATML, stop_words=("\nUser:",))
    options, stop_strings = generation_options(Template(several_tokens), tokenizer,
                                               InferArguments())
    assert stop_strings == ["\nUser:"] and options["stop_strings"] == ["\nUser:"]
    assert options["tokenizer"] is tokenizer
    assert finish_reply("Hello there.\nUser: and more", stop_strings) == "Hello there."
    # the first of a character's tokens, where --max-new-tokens ended the reply
    cut = tokenizer.decode(tokenizer.encode("你好🦦")[:-1])
    assert cut.endswith("\ufffd") and finish_reply(cut, []) == "你好"


def test_merge_lora_answers_as_the_adapter_does(plugin_set, identity_data, tmp_path, run_cli,
                                               tiny_plugin_file):
    run = train_lora(plugin_set, identity_data, tmp_path)
    registry, args = plugin_set.registry, InferArguments(max_new_tokens=8)
    adapter = load_for_inference(InferArguments(ckpt_dir=str(run.run_dir)), registry)
    merged = load_for_inference(InferArguments(ckpt_dir=str(run.run_dir), merge_lora=True),
                                registry)
    assert type(adapter[0]).__name__.startswith("Peft")
    assert type(merged[0]).__name__ == "LlamaForCausalLM"  # peft's layers are gone
    expected = generate(*adapter, USER, args)
    assert expected and generate(*merged, USER, args) == expected

    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", run.run_dir,
                     "--merge-lora", "--query", USER[0]["content"], "--max-new-tokens", "8")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == expected


def test_merge_lora_needs_an_adapter_checkpoint(plugin_set, identity_data, tmp_path, run_cli,
                                                tiny_plugin_file):
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--merge-lora", "--query", "hi")
    assert result.exit_code == 1 and "give --ckpt-dir" in result.stderr
    full = train_lora(plugin_set, identity_data, tmp_path, sft_type="full", max_steps=1)
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", full.checkpoint,
                     "--merge-lora", "--query", "hi")
    assert result.exit_code == 1
    assert "holds a whole model (--sft-type full), not an adapter; leave out --merge-lora" in (
        result.stderr)


def test_a_plain_model_folder_as_ckpt_dir_says_to_give_it_as_model_id_or_path(
        run_cli, tiny_plugin_file, tiny_model_dir):
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", tiny_model_dir,
                     "--query", "hi")
    assert result.exit_code == 1
    assert (f"--ckpt-dir '{tiny_model_dir}' is a plain model folder (no sft_args.json), not a "
            f"checkpoint of `sdk sft`; `sdk infer` takes it as --model-id-or-path "
            f"'{tiny_model_dir}' with its --model-type") in result.stderr


def test_a_model_type_other_than_the_checkpoints_is_refused_not_ignored(run_cli,
                                                                       tiny_plugin_file,
                                                                       tmp_path):
    checkpoint = tmp_path / "v0-20250101-000000" / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "sft_args.json").write_text(json.dumps(
        {"model_type": TINY_MODEL_TYPE, "sft_type": "lora", "template": "chatml"}))
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt-dir", checkpoint.parent,
                     "--model-type", "smollm2-135m-instruct", "--query", "hi")
    assert result.exit_code == 1
    assert (f"--model-type smollm2-135m-instruct differs from the model type {TINY_MODEL_TYPE} "
            f"that {checkpoint} was trained as; leave out --model-type") in result.stderr


def test_a_reply_stops_at_the_models_window_and_a_prompt_past_it_is_refused(
        run_cli, tiny_plugin_file, tiny):
    model, tokenizer = tiny
    calls = []
    recorded_generate(model, calls)
    window = model.config.max_position_embeddings
    generate(model, tokenizer, Template(CHATML), USER, InferArguments(max_new_tokens=10 * window))
    options, output = calls[-1]
    assert options["max_new_tokens"] == window - options["input_ids"].shape[1]
    long_query = "word " * window
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--query", long_query, "--max-new-tokens", "4")
    assert result.exit_code == 1
    assert f"and the model answers within {window} (its window" in result.stderr
    # in a chat the turn is refused and the conversation goes on
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--model-type", TINY_MODEL_TYPE,
                     "--max-new-tokens", "4", "--stream", "false",
                     input=f"{long_query}\nHi\nexit\n")
    assert result.exit_code == 0, result.output
    assert "'clear' forgets the conversation so far" in result.stderr
    assert len([line for line in result.stdout.splitlines() if line.strip()]) == 1  # Hi's reply


def test_a_prompt_adapters_virtual_tokens_count_in_the_window(tiny):
    from peft import PromptTuningConfig, get_peft_model

    from sdk.errors import SdkError
    from sdk.infer.chat import reply_budget

    model = get_peft_model(tiny[0], PromptTuningConfig(task_type="CAUSAL_LM",
                                                       num_virtual_tokens=30))
    window = model.config.max_position_embeddings
    assert reply_budget(model, 10, 10 * window) == window - 10 - 30
    with pytest.raises(SdkError, match="The prompt is 490 tokens .and the adapter's 30 virtual "
                                       "tokens."):
        reply_budget(model, window - 22, 4)
