"""Qwen3: model types, the official templates rendered like the Qwen3 tokenizer renders them
(enable_thinking, earlier reasoning dropped), reasoning data read and trained as the template
writes it, and tiny Qwen3 / Qwen3-MoE models trained packed, reloaded and merged."""

import hashlib
import json
from pathlib import Path

import pytest
from qwen3_tokenizer import save_qwen3_tokenizer
from sft_plugin_qwen import (
    QWEN3,
    QWEN3_INSTRUCT_2507_TEMPLATE,
    QWEN3_MOE,
    QWEN3_TEMPLATE,
    QWEN3_THINKING_2507_TEMPLATE,
)

from conftest import TOKENIZERS, save_tiny_model
from sdk.config import SftArguments
from sdk.data.formats import alpaca_to_messages, messages_to_messages, sharegpt_to_messages
from sdk.plugins import load_plugins
from sdk.templates.engine import Template, with_thinking
from sdk.testing import assert_template_parity, export_merged, train_and_reload, trained_spans

TEMPLATES = {spec.name: spec for spec in (QWEN3_TEMPLATE, QWEN3_INSTRUCT_2507_TEMPLATE,
                                          QWEN3_THINKING_2507_TEMPLATE)}
MODEL_TYPE_PER_TEMPLATE = {"qwen3": "qwen3-8b", "qwen3-instruct-2507": "qwen3-4b-instruct-2507",
                           "qwen3-thinking-2507": "qwen3-30b-a3b-thinking-2507"}
# sha256 of each .jinja: the chat_template of the tokenizer_config.json files cited in
# sft_plugin_qwen, as read from them (json-decoded).
OFFICIAL_SHA256 = {
    "qwen3": "a55ee1b1660128b7098723e0abcd92caa0788061051c62d51cbe87d9cf1974d8",
    "qwen3-instruct-2507": "40c21f34cf67d8c760ef72f8ad3ae5afad514299d4b06e91dd9a8d705af7b541",
    "qwen3-thinking-2507": "3802169b2a02b81e6adb7ab4f64f91ff02db753c8c3a64a01c35192d3a61d8d7",
}
REASONED = [{"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2.", "reasoning_content": "Add one and one."}]
CONVERSATIONS = {
    "reasoning field": REASONED,
    "reasoning inline": [{"role": "user", "content": "1+1?"},
                         {"role": "assistant", "content": "<think>\nAdd one.\n</think>\n\n2."}],
    "no reasoning, /no_think": [{"role": "system", "content": "Be brief."},
                                {"role": "user", "content": "Hi /no_think"},
                                {"role": "assistant", "content": "Hello!"}],
    "earlier reasoning dropped": [*REASONED, {"role": "user", "content": "2+2? /think"},
                                  {"role": "assistant", "content": "<think>Double.</think>4."}],
    "chinese": [{"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！", "reasoning_content": "打招呼。"}],
}
THINKING = {"not given": None, "true": True, "false": False}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("qwen3-tokenizer")
    return AutoTokenizer.from_pretrained(save_qwen3_tokenizer(
        TOKENIZERS / "qwen2", folder, QWEN3_TEMPLATE.jinja))


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


# --- registrations ------------------------------------------------------------------------------

def test_qwen3_model_types_name_their_architecture_template_and_targets(registry):
    dense = ["qwen3-0.6b", "qwen3-1.7b", "qwen3-4b", "qwen3-8b", "qwen3-14b", "qwen3-32b"]
    assert list(QWEN3) == dense
    for model_type in [*dense, "qwen3-8b-base", "qwen3-4b-instruct-2507",
                       "qwen3-4b-thinking-2507"]:
        spec = registry.get("models", model_type)
        assert spec.config_model_types == ("qwen3",) and not spec.requires_remote_code
        assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj",
                                            "gate_proj", "up_proj", "down_proj")
    for model_type in [*QWEN3_MOE, "qwen3-30b-a3b-instruct-2507",
                       "qwen3-235b-a22b-thinking-2507"]:
        spec = registry.get("models", model_type)
        assert spec.config_model_types == ("qwen3_moe",)
        assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    for model_type, hub_id, template in [
            ("qwen3-8b", "Qwen/Qwen3-8B", "qwen3"),
            ("qwen3-235b-a22b", "Qwen/Qwen3-235B-A22B", "qwen3"),
            ("qwen3-30b-a3b-base", "Qwen/Qwen3-30B-A3B-Base", "qwen3"),
            ("qwen3-235b-a22b-instruct-2507", "Qwen/Qwen3-235B-A22B-Instruct-2507",
             "qwen3-instruct-2507"),
            ("qwen3-30b-a3b-thinking-2507", "Qwen/Qwen3-30B-A3B-Thinking-2507",
             "qwen3-thinking-2507")]:
        spec = registry.get("models", model_type)
        assert spec.hub_ids == {"huggingface": hub_id, "modelscope": hub_id}
        assert spec.template == template
        assert registry.get("templates", template).reasoning == (template != "qwen3-instruct-2507")


# --- template text ------------------------------------------------------------------------------

def test_templates_are_the_official_texts_and_differ_only_in_the_generation_prompt():
    for name, spec in TEMPLATES.items():
        assert hashlib.sha256(spec.jinja.encode()).hexdigest() == OFFICIAL_SHA256[name]
    switch = ("    {%- if enable_thinking is defined and enable_thinking is false %}\n"
              "        {{- '<think>\\n\\n</think>\\n\\n' }}\n    {%- endif %}\n")
    assert QWEN3_TEMPLATE.jinja.replace(switch, "") == QWEN3_INSTRUCT_2507_TEMPLATE.jinja
    assert QWEN3_INSTRUCT_2507_TEMPLATE.jinja.replace(
        "{{- '<|im_start|>assistant\\n' }}\n{%- endif %}",
        "{{- '<|im_start|>assistant\\n<think>\\n' }}\n{%- endif %}",
    ) == QWEN3_THINKING_2507_TEMPLATE.jinja


def test_qwen3_tokenizer_has_the_think_tokens(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<think>", "</think>", "<|im_end|>"]) == [
        151667, 151668, 151645]
    assert tokenizer("<think>\n你好</think>\n\n")["input_ids"] == [
        151667, 198, 108386, 151668, 271]


@pytest.mark.parametrize("thinking", THINKING)
@pytest.mark.parametrize("template", TEMPLATES)
def test_render_equals_apply_chat_template(tokenizer, template, thinking):
    # each conversation as trained (to its last reply) and as prompted (before it)
    conversations = [shown for messages in CONVERSATIONS.values()
                     for shown in (messages, messages[:-1])]
    assert_template_parity(with_thinking(TEMPLATES[template], THINKING[thinking]), tokenizer,
                           conversations, chat_template=TEMPLATES[template].jinja)


@pytest.mark.parametrize("thinking", ["not given", "false"])
@pytest.mark.parametrize("template", TEMPLATES)
def test_sdk_template_render_equals_apply_chat_template(run_cli, tmp_path, tokenizer, template,
                                                        thinking):
    messages = CONVERSATIONS["earlier reasoning dropped"]
    path = tmp_path / "messages.json"
    path.write_text(json.dumps(messages), encoding="utf-8")
    flags = [] if thinking == "not given" else ["--enable-thinking", thinking]
    extra = {} if thinking == "not given" else {"enable_thinking": False}
    for prompt in (False, True):
        shown = messages[:-1] if prompt else messages
        path.write_text(json.dumps(shown), encoding="utf-8")
        result = run_cli("template", "render", "--model-type",
                         MODEL_TYPE_PER_TEMPLATE[template], "--messages", path, *flags,
                         *(["--add-generation-prompt"] if prompt else []))
        assert result.exit_code == 0, result.output
        assert result.stdout == tokenizer.apply_chat_template(
            shown, tokenize=False, add_generation_prompt=prompt,
            chat_template=TEMPLATES[template].jinja, **extra)


def test_earlier_reasoning_is_dropped_and_no_think_is_plain_text():
    text = Template(QWEN3_TEMPLATE).render(CONVERSATIONS["earlier reasoning dropped"])
    assert text == ("<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n2.<|im_end|>\n"
                    "<|im_start|>user\n2+2? /think<|im_end|>\n<|im_start|>assistant\n"
                    "<think>\nDouble.\n</think>\n\n4.<|im_end|>\n")
    prompt = with_thinking(QWEN3_TEMPLATE, False)
    assert Template(prompt).render(CONVERSATIONS["no reasoning, /no_think"][:2], True).endswith(
        "Hi /no_think<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")


# --- ids and loss masks -------------------------------------------------------------------------

# What the last reply trains: everything the model writes after the generation prompt.
TRAINED = {
    ("qwen3", None): ["<think>\nAdd one and one.\n</think>\n\n2.<|im_end|>"],
    # the generation prompt holds the empty block: the answer alone; the data's reasoning
    # stays in the text as the template writes it (context, not trained)
    ("qwen3", False): ["2.<|im_end|>"],
    # the non-thinking model's template writes a <think> block its model never generates
    ("qwen3-instruct-2507", None): ["2.<|im_end|>"],
    ("qwen3-thinking-2507", None): ["Add one and one.\n</think>\n\n2.<|im_end|>"],
}


@pytest.mark.parametrize("template, thinking", TRAINED)
def test_the_last_reply_trains_what_follows_the_generation_prompt(tokenizer, template, thinking):
    bound = Template.for_tokenizer(with_thinking(TEMPLATES[template], thinking), tokenizer)
    input_ids, labels = bound.encode(tokenizer, REASONED)
    assert input_ids == tokenizer(bound.render(REASONED), add_special_tokens=False)["input_ids"]
    assert trained_spans(tokenizer, input_ids, labels) == TRAINED[template, thinking]


def test_without_reasoning_the_empty_think_block_is_trained_unless_thinking_is_off(tokenizer):
    messages = CONVERSATIONS["no reasoning, /no_think"]
    for thinking, expected in ((None, "<think>\n\n</think>\n\nHello!<|im_end|>"),
                               (False, "Hello!<|im_end|>")):
        bound = Template.for_tokenizer(with_thinking(QWEN3_TEMPLATE, thinking), tokenizer)
        assert trained_spans(tokenizer, *bound.encode(tokenizer, messages)) == [expected]


def test_earlier_turns_train_their_answer_as_rendered_without_reasoning(tokenizer):
    messages = CONVERSATIONS["earlier reasoning dropped"]
    bound = Template.for_tokenizer(QWEN3_TEMPLATE, tokenizer)
    input_ids, labels = bound.encode(tokenizer, messages)
    assert trained_spans(tokenizer, input_ids, labels) == [
        "2.<|im_end|>", "<think>\nDouble.\n</think>\n\n4.<|im_end|>"]
    _, last = bound.encode(tokenizer, messages, loss_scope="last")
    assert trained_spans(tokenizer, input_ids, last) == [
        "<think>\nDouble.\n</think>\n\n4.<|im_end|>"]


def test_a_tool_call_turn_and_a_reasoned_answer_after_it(tokenizer):
    tools = [{"type": "function", "function": {"name": "now", "description": "The time",
                                               "parameters": {"type": "object"}}}]
    call = {"type": "function", "function": {"name": "now", "arguments": {}}}
    official = [{"role": "user", "content": "Time?"},
                {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": "12:00"},
                {"role": "assistant", "content": "Noon.", "reasoning_content": "Read it."}]
    messages = messages_to_messages({"messages": official, "tools": tools})
    bound = Template.for_tokenizer(QWEN3_TEMPLATE, tokenizer)
    assert bound.render(messages) == tokenizer.apply_chat_template(
        official, tools=tools, tokenize=False, chat_template=QWEN3_TEMPLATE.jinja)
    assert trained_spans(tokenizer, *bound.encode(tokenizer, messages)) == [
        '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call><|im_end|>',
        "<think>\nRead it.\n</think>\n\nNoon.<|im_end|>"]


# --- reasoning data -----------------------------------------------------------------------------

def test_reasoning_fields_are_read_into_reasoning_content():
    expected = [{"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2.", "reasoning_content": "Add."}]
    for key in ("reasoning_content", "thinking"):
        assert messages_to_messages({"messages": [
            {"role": "user", "content": "1+1?"},
            {"role": "assistant", "content": "2.", key: "Add."}]}) == expected
        assert alpaca_to_messages({"instruction": "1+1?", "output": "2.", key: "Add."}) == expected
        assert sharegpt_to_messages({"conversations": [
            {"from": "human", "value": "1+1?"}, {"from": "gpt", "value": "2.", key: "Add."}]},
        ) == expected
    with pytest.raises(ValueError, match="both 'reasoning_content' and 'thinking'"):
        messages_to_messages({"messages": [{"role": "assistant", "content": "2.",
                                            "reasoning_content": "a", "thinking": "b"}]})
    with pytest.raises(ValueError, match=r"messages\[0\] \(user\) has reasoning"):
        messages_to_messages({"messages": [{"role": "user", "content": "Q", "thinking": "a"}]})


def test_datasets_preview_shows_a_reasoning_row_as_the_template_renders_it(run_cli, tmp_path):
    data = tmp_path / "reasoning.jsonl"
    rows = [{"messages": CONVERSATIONS["earlier reasoning dropped"]},
            {"messages": [{"role": "user", "content": "1+1?"},
                          {"role": "assistant", "content": "2.", "thinking": "Add one and one."}]}]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = run_cli("datasets", "preview", data, "--template", "qwen3")
    assert result.exit_code == 0, result.output
    assert ("\n--- row 1 ---\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
            "[[2.<|im_end|>]]\n<|im_start|>user\n2+2? /think<|im_end|>\n<|im_start|>assistant\n"
            "[[<think>\nDouble.\n</think>\n\n4.<|im_end|>]]\n") in result.stdout
    assert ("\n--- row 2 ---\n<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
            "[[<think>\nAdd one and one.\n</think>\n\n2.<|im_end|>]]\n") in result.stdout
    result = run_cli("datasets", "preview", data, "--template", "qwen3",
                     "--enable-thinking", "false")
    assert ("<|im_start|>assistant\n<think>\nAdd one and one.\n</think>\n\n[[2.<|im_end|>]]\n"
            in result.stdout)


def test_other_tools_qwen3_template_names():
    from sdk.compat import LF_TEMPLATES, TEMPLATES, template

    assert template(LF_TEMPLATES)("qwen3_nothink") == {"template": "qwen3-instruct-2507"}
    assert template(TEMPLATES)("qwen3_thinking") == {"template": "qwen3-thinking-2507"}
    assert template(TEMPLATES)("qwen3") == {"template": "qwen3"}


def test_a_prediction_prompt_keeps_earlier_reasoning():
    from sdk.infer.predict import prompt_rows

    row = prompt_rows([CONVERSATIONS["earlier reasoning dropped"]])[0]
    assert row.prompt[1] == REASONED[1] and row.label == "<think>Double.</think>4."


def test_an_exported_chat_template_defaults_to_the_runs_enable_thinking(tokenizer):
    from sdk.templates.to_jinja import to_jinja

    messages = CONVERSATIONS["no reasoning, /no_think"][:2]
    exported = to_jinja(Template(with_thinking(QWEN3_TEMPLATE, False)))
    for extra, thinking in (({}, False), ({"enable_thinking": True}, True)):
        assert tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=True, chat_template=exported,
            **extra) == Template(with_thinking(QWEN3_TEMPLATE, thinking)).render(messages, True)
    assert to_jinja(Template(QWEN3_TEMPLATE)) == QWEN3_TEMPLATE.jinja


def test_enable_thinking_is_a_run_setting():
    from sdk.train.plan import template_of

    registry = load_plugins().registry
    spec = registry.get("models", "qwen3-8b")
    assert template_of(SftArguments(), spec, registry).variables == {}
    assert template_of(SftArguments(enable_thinking=False), spec, registry).variables == {
        "enable_thinking": False}


# --- tiny Qwen3 and Qwen3-MoE: packed LoRA, reload, merge ---------------------------------------

def tiny_qwen3(tokenizer, folder: Path, moe: bool, **settings) -> Path:
    from transformers import (
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    ids = {"eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
           "pad_token_id": tokenizer.pad_token_id, "head_dim": 8, "tie_word_embeddings": True}
    if moe:
        return save_tiny_model(Qwen3MoeForCausalLM, Qwen3MoeConfig, tokenizer, folder,
                               num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                               **ids, **settings)
    return save_tiny_model(Qwen3ForCausalLM, Qwen3Config, tokenizer, folder, **ids, **settings)


@pytest.mark.parametrize("model_type, moe", [("qwen3-0.6b", False), ("qwen3-30b-a3b", True)])
def test_tiny_qwen3_trains_packed_reloads_and_exports_merged(tokenizer, identity_data, tmp_path,
                                                             registry, capsys, model_type, moe):
    from transformers import AutoTokenizer

    from sdk.train.packing import why_not_packed

    model_dir = tiny_qwen3(tokenizer, tmp_path / "model", moe)
    trained = train_and_reload(registry, model_type, model_dir, identity_data, tmp_path / "out",
                               seed=0, enable_thinking=False)
    assert trained.saved["packing"] is True and trained.saved["enable_thinking"] is False
    assert why_not_packed(trained.result.model, SftArguments()) is None  # the probe passes
    adapter = json.loads((trained.result.checkpoint / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(registry.get("models", model_type)
                                                 .lora_target_modules)
    # --enable-thinking false, kept by the run: the prompt ends in the empty think block
    prompt = "<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tokenizer.decode(trained.inputs["input_ids"][0]).endswith(prompt)
    if moe:  # merging attention LoRA is the dense case; experts: the test after this one
        return
    capsys.readouterr()  # what training printed
    export_merged(registry, trained, tmp_path / "merged")
    assert "warning" not in capsys.readouterr().err
    exported = AutoTokenizer.from_pretrained(tmp_path / "merged")  # its chat template: the run's
    assert exported.apply_chat_template([{"role": "user", "content": "Who are you?"}],
                                        tokenize=False, add_generation_prompt=True).endswith(prompt)


def test_lora_reaches_qwen3_moe_experts_by_their_weight_names(tokenizer, tmp_path, registry):
    """transformers keeps the experts as fused 3-D weights: --lora-target-modules names them
    (experts.gate_up_proj / experts.down_proj) and they get LoRA through peft's
    target_parameters; the adapter reloads and merges to the same logits."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from sdk.testing import AnyTunerArguments
    from sdk.tuners.lora import with_lora

    folder = tiny_qwen3(tokenizer, tmp_path / "moe", True)
    args = AnyTunerArguments(lora_target_modules=[
        "q_proj", "experts.gate_up_proj", "experts.down_proj"], init_lora_weights="gaussian")
    model = with_lora(AutoModelForCausalLM.from_pretrained(folder), args,
                      registry.get("models", "qwen3-30b-a3b"))
    trainable = {name.split(".lora_")[0].rsplit(".", 1)[-1]
                 for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"q_proj", "experts", "base_layer"}  # peft's wrappers of the 2 weights
    assert set(model.peft_config["default"].target_parameters) == {
        "experts.gate_up_proj", "experts.down_proj"}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapter an effect to compare
                parameter.normal_(0, 0.5)
    model.eval().save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([tokenizer("Hello world, 你好")["input_ids"]])
    with torch.no_grad():
        tuned = model(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(folder)
        assert not torch.allclose(base(input_ids=ids).logits, tuned, atol=1e-4)
        reloaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        torch.testing.assert_close(reloaded(input_ids=ids).logits, tuned)
        torch.testing.assert_close(reloaded.merge_and_unload()(input_ids=ids).logits, tuned,
                                   rtol=1e-4, atol=1e-4)


def test_qwen3_moe_router_loss_is_the_models_own(tokenizer, tmp_path):
    """With output_router_logits (off in the published configs) transformers adds
    router_aux_loss_coef x the load-balancing loss to the loss: the run then keeps the model's
    own loss (the chunked loss would drop it)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sdk.train.loss import choose_loss

    folder = tiny_qwen3(tokenizer, tmp_path / "moe", True, output_router_logits=True,
                        router_aux_loss_coef=0.5)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert choose_loss("auto", model, on_cuda=False, sharded=False) == (
        "standard", "the model adds its router's auxiliary loss to the language-model loss")
    ids = torch.tensor([tokenizer("Hello world, 你好")["input_ids"]])
    output = model(input_ids=ids, labels=ids)
    language = torch.nn.functional.cross_entropy(output.logits[0, :-1], ids[0, 1:])
    torch.testing.assert_close(output.loss, language + 0.5 * output.aux_loss)
    model.config.output_router_logits = False
    assert choose_loss("auto", model, on_cuda=False, sharded=False)[0] == "chunked"
