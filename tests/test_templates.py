"""Template rendering, loss masks and token ids, with the real Qwen2 tokenizer (ChatML)."""

import json

import pytest
from transformers import AutoTokenizer

from conftest import TOKENIZERS, trained_text
from sdk.specs import TemplateSpec
from sdk.templates.builtin import CHATML, DEFAULT
from sdk.templates.engine import IGNORE_INDEX, Template

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "床前明月光"},
    {"role": "assistant", "content": "疑是地上霜"},
]


@pytest.fixture(scope="module")
def qwen_tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")


def test_chatml_renders_like_the_qwen2_chat_template(qwen_tokenizer):
    template = Template(CHATML)
    for messages in (CONVERSATION, CONVERSATION[:2]):
        for generation_prompt in (False, True):
            expected = qwen_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt)
            assert template.render(messages, generation_prompt) == expected


def test_only_assistant_replies_and_their_end_marker_carry_loss(qwen_tokenizer):
    input_ids, labels = Template(CHATML).encode(qwen_tokenizer, CONVERSATION)
    assert trained_text(qwen_tokenizer, input_ids, labels) == "Hello!<|im_end|>疑是地上霜<|im_end|>"
    assert labels[0] == IGNORE_INDEX


def test_loss_scope_last_trains_only_the_final_reply(qwen_tokenizer):
    input_ids, labels = Template(CHATML).encode(qwen_tokenizer, CONVERSATION, loss_scope="last")
    assert trained_text(qwen_tokenizer, input_ids, labels) == "疑是地上霜<|im_end|>"


def test_encoded_ids_equal_the_tokenizers_ids_for_the_rendered_text(qwen_tokenizer):
    template = Template(CHATML)
    input_ids, _ = template.encode(qwen_tokenizer, CONVERSATION)
    text = template.render(CONVERSATION)
    assert input_ids == qwen_tokenizer(text, add_special_tokens=False)["input_ids"]


def test_default_template_ends_replies_with_the_tokenizers_eos(qwen_tokenizer):
    template = Template.for_tokenizer(DEFAULT, qwen_tokenizer)
    text = template.render(CONVERSATION[1:3])
    assert text == "### Human:\nHi\n\n### Assistant:\nHello!<|endoftext|>\n\n"
    input_ids, labels = template.encode(qwen_tokenizer, CONVERSATION[1:3])
    assert trained_text(qwen_tokenizer, input_ids, labels) == "Hello!<|endoftext|>"


@pytest.mark.parametrize("messages, reason", [
    ([], "no messages"),
    ([{"role": "robot", "content": "x"}], "role 'robot'"),
    ([{"role": "user"}], "no text 'content'"),
    ([{"role": "user", "content": "x"}, {"role": "system", "content": "y"}], "only the first"),
])
def test_bad_conversations_are_rejected_with_a_reason(messages, reason):
    with pytest.raises(ValueError, match=reason):
        Template(CHATML).render(messages)


def test_template_render_command_prints_exactly_the_text(run_cli, tmp_path, qwen_tokenizer):
    messages = tmp_path / "messages.json"
    messages.write_text(json.dumps(CONVERSATION[:2]), encoding="utf-8")
    result = run_cli("template", "render", "chatml", "--messages", messages,
                     "--add-generation-prompt")
    assert result.exit_code == 0
    assert result.stdout == qwen_tokenizer.apply_chat_template(
        CONVERSATION[:2], tokenize=False, add_generation_prompt=True)


def test_template_render_rejects_a_bad_messages_file(run_cli, tmp_path):
    messages = tmp_path / "messages.json"
    messages.write_text('[{"role": "user"}]', encoding="utf-8")
    result = run_cli("template", "render", "chatml", "--messages", messages)
    assert result.exit_code == 1
    assert "messages.json" in result.stderr


def test_a_reply_word_merged_with_the_prompts_trailing_space_still_carries_loss(
        qwen_tokenizer):
    spaced = TemplateSpec(name="spaced", user_format="User: {content}\n",
                          assistant_prefix="Assistant: ", assistant_suffix="<|im_end|>",
                          turn_separator="\n")
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"}]
    input_ids, labels = Template(spaced).encode(qwen_tokenizer, messages)
    assert "ĠHello" in qwen_tokenizer.convert_ids_to_tokens(input_ids)  # space + word
    assert trained_text(qwen_tokenizer, input_ids, labels) == " Hello there<|im_end|>"


@pytest.mark.parametrize("family, suffix", [("llama2", "</s>"), ("mistral-v0.1", "</s>"),
                                            ("llama3", "<|eot_id|>"), ("qwen2", "<|im_end|>")])
def test_jinja_templates_render_like_the_tokenizer_and_train_only_replies(family, suffix):
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / family)
    spec = TemplateSpec(name=family, jinja=tokenizer.chat_template, assistant_suffix=suffix)
    conversation = [m for m in CONVERSATION if family != "mistral-v0.1" or m["role"] != "system"]
    template = Template.for_tokenizer(spec, tokenizer)
    expected = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert template.render(conversation) == expected
    input_ids, labels = template.encode(tokenizer, conversation)
    assert input_ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    trained = trained_text(tokenizer, input_ids, labels)
    assert trained.replace(" ", "") == f"Hello!{suffix}疑是地上霜{suffix}"
    _, last_only = template.encode(tokenizer, conversation, loss_scope="last")
    assert trained_text(tokenizer, input_ids, last_only).replace(" ", "") == f"疑是地上霜{suffix}"


def test_a_jinja_template_that_raises_gives_its_message():
    spec = TemplateSpec(name="strict", jinja="{{ raise_exception('roles must alternate') }}")
    with pytest.raises(ValueError, match="roles must alternate"):
        Template(spec).render([{"role": "user", "content": "hi"}])


BROKEN_TEMPLATES = """
from sdk import hookimpl
from sdk.specs import TemplateSpec

@hookimpl
def register_templates(register):
    register(TemplateSpec(name="unclosed", jinja="{% for m in messages %}{{ m.content }"))
    register(TemplateSpec(name="no-filter", jinja="{{ messages | nofilter }}"))
    register(TemplateSpec(name="bad-attribute", jinja="{{ messages[0].content.x.y }}"))
    register(TemplateSpec(name="typo", user_format="<u>{contents}</u>", assistant_prefix="<a>"))
"""


@pytest.mark.parametrize("name, problem", [
    ("unclosed", "has jinja that does not compile: unexpected '}' (line 1)"),
    ("no-filter", "has jinja that does not compile: No filter named 'nofilter' (line 1)"),
    ("bad-attribute", "failed to render: 'str object' has no attribute 'x'"),
    ("typo", "has {contents} in its user_format: did you mean {content}?"),
])
def test_a_broken_plugin_template_is_named_without_a_traceback(run_cli, tmp_path, name,
                                                               problem):
    plugin = tmp_path / "broken_templates.py"
    plugin.write_text(BROKEN_TEMPLATES)
    messages = tmp_path / "messages.json"
    messages.write_text('[{"role": "user", "content": "Hi"}]')
    result = run_cli("--plugin", plugin, "template", "render", name, "--messages", messages)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Template '{name}' {problem}" in result.stderr


def test_tokenizer_added_special_tokens_are_kept_and_never_trained():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "llama2")  # adds <s> itself
    spec = TemplateSpec(name="round", user_format="问：{content}\n\n", assistant_prefix="答：",
                        assistant_suffix="</s>", add_special_tokens=True)
    template = Template(spec)
    messages = CONVERSATION[1:3]
    input_ids, labels = template.encode(tokenizer, messages)
    assert input_ids == tokenizer(template.render(messages))["input_ids"]
    assert input_ids[0] == tokenizer.bos_token_id and labels[0] == IGNORE_INDEX
    assert trained_text(tokenizer, input_ids, labels) == "Hello!</s>"
    prompt = template.tokenize_prompt(tokenizer, messages[:1])
    assert prompt["input_ids"][0, 0].item() == tokenizer.bos_token_id


def trained_spans_of(template, messages):
    """The runs of trained text, each run joined from consecutive trained pieces."""
    spans, current = [], ""
    for text, trained in template.pieces(messages):
        if trained:
            current += text
        elif text and current:
            spans.append(current)
            current = ""
    return spans + ([current] if current else [])


def installed_templates():
    from sdk.plugins import load_plugins

    registry = load_plugins().registry
    return [registry.get("templates", name) for name in registry.names("templates")]


@pytest.mark.parametrize("reply", ["1", "0", "B", "I", "答", "assistant", "user", "end", "a",
                                   "INST", "system", "中文"])
@pytest.mark.parametrize("spec", installed_templates(), ids=lambda spec: spec.name)
def test_replies_that_also_appear_in_the_template_text_are_the_ones_trained(spec, reply):
    template = Template(spec)
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": reply},
                {"role": "user", "content": "Q2"}, {"role": "assistant", "content": reply}]
    suffix = template._fill(spec.assistant_suffix)
    spans = trained_spans_of(template, messages)
    assert len(spans) == 2
    for span in spans:
        if spec.reasoning:  # the <think> block written before the last reply is trained too
            span = span.split("</think>")[-1]
        assert span.strip() in (reply, reply + suffix, f"{reply} {suffix}".strip()), span
    assert spans[-1].strip().endswith(suffix)  # the final reply always learns to stop


def test_a_template_that_drops_the_system_prompt_in_training_is_reported():
    from sdk.data.encode import EncodeStats, drops_system_prompt

    keeps = Template(CHATML)
    drops = Template(TemplateSpec(name="no-system", jinja=(
        "{% for m in messages %}{% if m['role'] != 'system' %}{{ m['content'] }}"
        "{% endif %}{% endfor %}")))
    assert drops_system_prompt(drops, [CONVERSATION]) is True
    assert drops_system_prompt(keeps, [CONVERSATION]) is False
    assert drops_system_prompt(drops, [CONVERSATION[1:]]) is False  # nothing to drop
    assert "leaves the system prompt out" in EncodeStats(system_dropped=True).summary()


def test_a_row_the_template_cannot_render_is_named(qwen_tokenizer):
    from sdk.data.encode import encode_conversations
    from sdk.errors import SdkError

    strict = Template(TemplateSpec(name="no-system", jinja=(
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")))
    with pytest.raises(SdkError, match="Training row 2 .* template 'no-system': Only user"):
        encode_conversations(strict, qwen_tokenizer, [CONVERSATION[1:3], CONVERSATION], 100)


def test_template_render_takes_a_record_of_any_registered_format(run_cli, tmp_path):
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text('{"instruction": "Hi", "output": "Hello"}')
    result = run_cli("template", "render", "chatml", "--messages", alpaca)
    assert result.exit_code == 0, result.output
    assert result.stdout == ("<|im_start|>user\nHi<|im_end|>\n"
                             "<|im_start|>assistant\nHello<|im_end|>\n")


def test_template_render_takes_a_prompt_without_reply_and_names_its_own_fixes(run_cli,
                                                                             tmp_path):
    question = tmp_path / "sharegpt.json"
    question.write_text('{"conversations": [{"from": "human", "value": "Hi"}]}')
    result = run_cli("template", "render", "chatml", "--messages", question,
                     "--add-generation-prompt")
    assert result.exit_code == 0, result.output
    assert result.stdout == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

    unknown = tmp_path / "unknown.json"
    unknown.write_text('{"question": "Hi"}')
    result = run_cli("template", "render", "chatml", "--messages", unknown)
    assert result.exit_code == 1 and "cannot tell the format" in result.stderr
    assert "--dataset-format" not in result.stderr  # not a flag of template render
    assert 'Give a JSON list of {"role": ..., "content": ...} messages' in result.stderr


def test_template_render_of_a_jsonl_dataset_points_to_datasets_preview(run_cli, tmp_path):
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"instruction": "Hi", "output": "Hello"}\n' * 2)
    result = run_cli("template", "render", "chatml", "--messages", rows)
    assert result.exit_code == 1
    assert "It holds more than one JSON value (a .jsonl dataset?)" in result.stderr
    assert "`sdk datasets preview FILE --template NAME`" in result.stderr
