"""LLaMA-Factory's own data folder (first rows of its files, tests/data/llama_factory/) through
--dataset-info, entry by entry, as `sdk datasets preview` shows it."""

import json
from pathlib import Path

import pytest

FOLDER = Path(__file__).parent / "data" / "llama_factory"


@pytest.fixture
def preview(run_cli):
    def run(name, *flags, template="chatml"):
        return run_cli("datasets", "preview", "--dataset-info", FOLDER, name,
                       "--template", template, *flags)
    return run


def test_identity_placeholders_are_filled_from_the_model_name_and_author(preview):
    result = preview("identity", "--model-name", "Ferret", "--model-author", "Acme", "-n", "1")
    assert result.exit_code == 0, result.output
    assert ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n[[Hello! I am Ferret, an "
            "AI assistant developed by Acme. How can I assist you today?<|im_end|>]]"
            in result.stdout)
    assert "{{" not in result.stdout


def test_two_names_are_chinese_then_english_and_identity_json_is_english(preview):
    result = preview("identity", "--model-name", "雪貂", "Ferret", "--model-author", "测试",
                     "Acme", "-n", "4")
    assert result.exit_code == 0, result.output
    assert "I am Ferret, an AI assistant developed by Acme" in result.stdout
    assert "雪貂" not in result.stdout


@pytest.mark.parametrize("flags, missing", [
    ((), "--model-name"),
    (("--model-name", "Ferret"), "--model-author"),
])
def test_identity_without_the_flags_is_refused_naming_dataset_and_flag(preview, flags,
                                                                       missing):
    result = preview("identity", *flags)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert (f"Dataset 'identity' in {FOLDER / 'dataset_info.json'} (its rows hold {{{{name}}}} "
            f"/ {{{{author}}}} placeholders) needs {missing}: " in result.stderr)


def test_kto_data_trains_only_the_desirable_replies_and_says_how_many_were_left_out(preview):
    result = preview("kto_en_demo", "-n", "5")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("2 rows from kto_en_demo")
    assert "Karenderia" not in result.stdout  # the third row's reply: kto_tag false
    assert ("[sdk] kto_en_demo: 1 of 3 rows left out (its kto_tag column 'label' is false: "
            "undesirable replies" in result.stderr)


def test_a_kto_tag_that_is_not_true_or_false_is_refused(run_cli, tmp_path):
    (tmp_path / "dataset_info.json").write_text(
        '{"k": {"file_name": "k.json", "columns": {"kto_tag": "label"}}}', encoding="utf-8")
    (tmp_path / "k.json").write_text('[{"instruction": "q", "output": "a", "label": "yes"}]',
                                     encoding="utf-8")
    result = run_cli("datasets", "preview", "--dataset-info", tmp_path, "k", "--template",
                     "chatml")
    assert result.exit_code == 1
    assert "its kto_tag column 'label' holds 'yes'; each row needs true" in result.stderr


def test_kto_data_trains_a_step_and_a_run_on_its_cached_rows_says_the_same(
        run_cli, tiny_plugin_file, tiny_model_dir, tmp_path):
    from conftest import TINY_MODEL_TYPE

    sft = ("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
           "--model-id-or-path", tiny_model_dir, "--dataset-info", FOLDER, "--dataset",
           "kto_en_demo", "--output-dir", tmp_path / "out", "--max-length", "256",
           "--truncation-strategy", "truncation_left")
    trained = run_cli(*sft, "--max-steps", "1", "--batch-size", "1")
    assert trained.exit_code == 0, trained.output
    again = run_cli(*sft, "--dry-run")  # reads the rows the run cached
    assert again.exit_code == 0, again.output
    assert "2 training rows" in trained.stderr
    for result in (trained, again):
        assert "[sdk] kto_en_demo: 1 of 3 rows left out" in result.stderr


@pytest.mark.parametrize("name, message", [
    ("dpo_en_demo", "is preference data (\"ranking\": true: chosen and rejected answers)"),
    ("mllm_demo", "has images columns (multimodal data)"),
    ("mllm_video_demo", "has videos columns (multimodal data)"),
    ("c4_demo", "is pre-training text (a prompt column 'text' and no response column)"),
])
def test_what_supervised_fine_tuning_cannot_train_is_refused(preview, name, message):
    result = preview(name)
    assert result.exit_code == 1
    assert f"Dataset '{name}' in {FOLDER / 'dataset_info.json'} {message}" in result.stderr


def test_glaive_tool_schemas_calls_and_results_render_as_qwen2_5_writes_them(preview):
    result = preview("glaive_toolcall_en_demo", "-n", "1", template="qwen2.5")
    assert result.exit_code == 0, result.output
    assert result.stdout.split("--- row 1 ---\n")[1].startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
        "assistant.\n\n# Tools\n\nYou may call one or more functions to assist with the user "
        "query.\n\nYou are provided with function signatures within <tools></tools> XML tags:"
        '\n<tools>\n{"type": "function", "function": {"name": "search_recipes", "description": '
        '"Search for recipes based on ingredients", "parameters": {"type": "object", ')
    # the function call is the trained reply; the tool's answer is prompt
    assert ("<|im_start|>user\nI have chicken, bell peppers, and rice.<|im_end|>\n"
            '<|im_start|>assistant\n[[<tool_call>\n{"name": "search_recipes", "arguments": '
            '{"ingredients": ["chicken", "bell peppers", "rice"]}}\n</tool_call><|im_end|>]]\n'
            '<|im_start|>user\n<tool_response>\n{"recipes": [{"name": "Chicken and Bell Pepper'
            in result.stdout)
    assert "</tool_response><|im_end|>\n<|im_start|>assistant\n[[I found two recipes" in (
        result.stdout)


@pytest.mark.parametrize("template, tokenizer_folder", [
    ("qwen2.5", "qwen2"), ("llama3.1", "llama3"), ("mistral-v0.3", "mistral-v0.3")])
def test_tool_data_renders_as_the_tokenizers_own_apply_chat_template(template,
                                                                     tokenizer_folder):
    """The same text as transformers' apply_chat_template(messages, tools=...) with the
    family's official template, on the real tokenizer."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from conftest import TOKENIZERS
    from sdk.data.conversations import load_conversations
    from sdk.plugins import load_plugins
    from sdk.templates.engine import Template

    registry = load_plugins().registry
    spec = registry.get("templates", template)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / tokenizer_folder)
    conversations = load_conversations(["glaive_toolcall_en_demo"], registry,
                                       SimpleNamespace(dataset_info=str(FOLDER)))
    assert [len(c) for c in conversations] == [8, 10]
    for conversation in conversations:
        tools = json.loads(conversation[0].get("tools", "null"))  # the second row has none
        messages = [{key: json.loads(value) if key == "tool_calls" else value
                     for key, value in message.items() if key != "tools"}
                    for message in conversation]
        official = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                 chat_template=spec.jinja)
        assert Template.for_tokenizer(spec, tokenizer).render(conversation) == official


def test_mistral_v0_3_places_the_schemas_before_the_last_user_turn_and_trains_the_call(
        preview):
    result = preview("glaive_toolcall_en_demo", "-n", "1", template="mistral-v0.3")
    assert result.exit_code == 0, result.output
    assert ('rice.[/INST][[[TOOL_CALLS] [{"name": "search_recipes", "arguments": '
            '{"ingredients": ["chicken", "bell peppers", "rice"]}, "id": "call00001"}]</s>]]'
            '[TOOL_RESULTS] {"content": {"recipes": ' in result.stdout)
    assert '"call_id": "call00001"}[/TOOL_RESULTS] [[I found two recipes' in result.stdout
    assert ('</s>]][AVAILABLE_TOOLS] [{"type": "function", "function": {"name": '
            '"search_recipes"' in result.stdout)
    assert result.stdout.count("[AVAILABLE_TOOLS]") == 1


@pytest.mark.parametrize("template, schemas, call", [
    ("chatglm3", "[gMASK]sop<|system|>\n Answer the following questions as best as you can. You "
                 'have access to the following tools:\n[\n    {\n        "name": "search_recipes"',
     "I have chicken, bell peppers, and rice.<|assistant|>[[search_recipes\n ```python\n"
     "tool_call(ingredients=['chicken', 'bell peppers', 'rice'])\n```<|observation|>]]\n "
     '{"recipes": '),
    ("glm4", "[gMASK]<sop><|system|>\n你是一个名为 ChatGLM 的人工智能助手。",
     "rice.<|assistant|>[[search_recipes\n"
     '{"ingredients": ["chicken", "bell peppers", "rice"]}<|observation|>]]\n{"recipes": '),
    ("glm4-0414", "[gMASK]<sop><|system|>\n# 可用工具\n\n## search_recipes\n\n{\n",
     "rice.<|assistant|>[[search_recipes \n"
     '{"ingredients": ["chicken", "bell peppers", "rice"]}<|observation|>]]\n{"recipes": '),
    ("internlm2", '<s><|im_start|>system name=<|plugin|>\n[\n    {\n        "name": '
                  '"search_recipes"',
     "<|im_start|>assistant\n[[<|action_start|><|plugin|>\n{\"name\": \"search_recipes\", "
     '"parameters": {"ingredients": ["chicken", "bell peppers", "rice"]}}<|action_end|>'
     '<|im_end|>]]\n<|im_start|>environment name=<|plugin|>\n{"recipes": '),
])
def test_chatglm3_glm4s_and_internlm2_write_the_schemas_and_train_the_call_in_their_format(
        preview, template, schemas, call):
    result = preview("glaive_toolcall_en_demo", "-n", "1", template=template)
    assert result.exit_code == 0, result.output
    assert result.stdout.split("--- row 1 ---\n")[1].startswith(schemas)
    assert call in result.stdout


@pytest.mark.parametrize("template, kind", [
    ("chatml", "a parts template"),
    ("qwen", "a jinja template that never reads `tools`"),
])
def test_a_template_without_a_tool_format_refuses_tool_data(preview, template, kind):
    result = preview("glaive_toolcall_en_demo", template=template)
    assert result.exit_code == 1
    assert (f"Row 1 of glaive_toolcall_en_demo cannot be rendered with template '{template}': "
            f"it uses tools (schemas, calls or results), and template '{template}' has no tool "
            f"format ({kind}), so they would be dropped" in result.stderr)


def test_tool_data_goes_through_the_training_rows_cache(run_cli, tiny_plugin_file,
                                                        tiny_model_dir, tmp_path):
    from conftest import TINY_MODEL_TYPE

    sft = ("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
           "--model-id-or-path", tiny_model_dir, "--dataset-info", FOLDER, "--dataset",
           "glaive_toolcall_en_demo", "--output-dir", tmp_path / "out", "--dry-run")
    result = run_cli(*sft, "--template", "qwen2.5")
    assert result.exit_code == 0, result.output
    refused = run_cli(*sft, "--template", "chatml")
    assert refused.exit_code == 1
    assert (f"{FOLDER / 'glaive_toolcall_en_demo.json'} (record 1): the row cannot be "
            "rendered with template 'chatml': it uses tools" in refused.stderr)


def test_tool_schemas_and_calls_survive_the_arrow_cache(tmp_path):
    from sft_plugin_qwen import QWEN2_5_TEMPLATE

    from sdk.config import SftArguments
    from sdk.data.arrow import conversations_dataset
    from sdk.data.conversations import load_conversations
    from sdk.plugins import load_plugins
    from sdk.templates.engine import Template

    registry = load_plugins().registry
    args = SftArguments(dataset_info=str(FOLDER), dataset=["glaive_toolcall_en_demo"])
    rows = conversations_dataset(args.dataset, registry, args, None, tmp_path)["messages"]
    template = Template(QWEN2_5_TEMPLATE)
    read = load_conversations(args.dataset, registry, args)
    assert [template.render(m) for m in rows] == [template.render(m) for m in read]
    assert '<tools>\n{"type": "function"' in template.render(rows[0])


def test_an_alpaca_entry_keeps_its_tools_column(tmp_path):
    from types import SimpleNamespace

    from sdk.data.conversations import load_conversations
    from sdk.plugins import load_plugins

    tool = {"name": "now", "description": "The time", "parameters": {"type": "object"}}
    (tmp_path / "dataset_info.json").write_text(
        '{"a": {"file_name": "a.json", "columns": {"tools": "functions"}}}', encoding="utf-8")
    (tmp_path / "a.json").write_text(json.dumps([{"instruction": "Time?", "output": "Noon.",
                                                  "functions": json.dumps([tool])}]),
                                     encoding="utf-8")
    [conversation] = load_conversations(["a"], load_plugins().registry,
                                        SimpleNamespace(dataset_info=str(tmp_path)))
    assert json.loads(conversation[0]["tools"]) == [{"type": "function", "function": tool}]


def test_template_render_shows_openai_tool_messages(run_cli, tmp_path):
    record = tmp_path / "tools.json"
    record.write_text(json.dumps({
        "tools": [{"name": "now", "description": "The time", "parameters": {"type": "object"}}],
        "messages": [{"role": "user", "content": "Time?"},
                     {"role": "assistant", "tool_calls": [
                         {"type": "function", "function": {"name": "now", "arguments": {}}}]},
                     {"role": "tool", "content": "12:00"}]}), encoding="utf-8")
    result = run_cli("template", "render", "qwen2.5", "--messages", record)
    assert result.exit_code == 0, result.output
    assert '<tools>\n{"type": "function", "function": {"name": "now"' in result.stdout
    assert result.stdout.endswith(
        '<|im_start|>assistant\n<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
        "<|im_end|>\n<|im_start|>user\n<tool_response>\n12:00\n</tool_response><|im_end|>\n")
