"""DeepSeek-R1 distills: every model type is registered; the deepseek-r1 template renders as the
official chat template (sdk.testing's parity check), renders and trains the last reply's
reasoning as the distills emit it after their generation prompt, drops earlier reasoning as the
official template does, encodes to the tokenizer's own ids; a tiny Qwen2 trains with it.

No distill tokenizer can be had offline, so the tokenizers here are the shared Qwen2.5 and Llama 3
ones with the distills' special tokens written over the same ids (DeepSeek-R1-Distill-Qwen's
tokenizer.json: 151643-151649; the Llama distills' bos/eos 128000/128001 and role and think tokens
in Llama 3's reserved slots): the vocabularies the distills were built from."""

import json

import pytest
from sft_plugin_deepseek import (
    MODELS,
    OFFICIAL_JINJA,
    OFFICIAL_REPLY,
    REASONING_REPLY,
    TEMPLATES,
    TRAINING_JINJA,
)

from conftest import CONVERSATIONS, TOKENIZERS, save_tiny_model
from sdk.data.preview import marked
from sdk.plugins import load_plugins
from sdk.templates.engine import Template
from sdk.testing import assert_template_parity, assert_trained_spans, train_and_reload

SPEC = TEMPLATES[0]
BOS, EOS = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"
DISTILL_TOKENS = {
    "qwen2": {151643: EOS, 151644: "<｜User｜>", 151645: "<｜Assistant｜>", 151646: BOS,
              151647: "<|EOT|>", 151648: "<think>", 151649: "</think>"},
    "llama3": {128000: BOS, 128001: EOS, 128011: "<｜User｜>", 128012: "<｜Assistant｜>",
               128013: "<think>", 128014: "</think>"},
}
REASONING = [
    {"role": "system", "content": "You are a careful solver."},
    {"role": "user", "content": "What is 2+3?"},
    {"role": "assistant", "reasoning_content": "2 plus 3.", "content": "5"},
    {"role": "user", "content": "And times 4?"},
    {"role": "assistant", "reasoning_content": "First 5, then\n5*4 = 20.",
     "content": "**20**"},
]
LAST_REPLY = "First 5, then\n5*4 = 20.\n</think>\n\n**20**" + EOS
# The same conversation with the reasoning written into the replies (ms-swift's data).
INLINE = [dict(m, content=f"<think>\n{m['reasoning_content']}\n</think>\n\n{m['content']}")
          if "reasoning_content" in m else m for m in REASONING]
for message in INLINE:
    message.pop("reasoning_content", None)
NOT_SPECIAL = {"<｜User｜>", "<｜Assistant｜>", "<|EOT|>", "<think>", "</think>"}


def distill_tokenizer(base: str):
    """A shared tokenizer with the distill's special tokens at their ids and its chat template."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    data = json.loads((TOKENIZERS / base / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    for token in data["added_tokens"]:
        if token["id"] in DISTILL_TOKENS[base]:
            vocab.pop(token["content"], None)
            token["content"] = DISTILL_TOKENS[base][token["id"]]
            token["special"] = token["content"] not in NOT_SPECIAL
            vocab[token["content"]] = token["id"]
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(data)),
                                   bos_token=BOS, eos_token=EOS, chat_template=OFFICIAL_JINJA)


@pytest.fixture(scope="module")
def tokenizers():
    return {base: distill_tokenizer(base) for base in DISTILL_TOKENS}


def test_every_model_type_is_registered_with_hub_ids_and_the_deepseek_r1_template():
    registry = load_plugins().registry
    assert registry.get("templates", "deepseek-r1") == SPEC
    for model_type, (size, architecture) in MODELS.items():
        spec = registry.get("models", model_type)
        repo = f"deepseek-ai/DeepSeek-R1-Distill-{size}"
        assert spec.hub_ids == {"huggingface": repo, "modelscope": repo}
        assert spec.template == "deepseek-r1" and spec.family == "deepseek"
        assert spec.config_model_types == (architecture,)
        assert model_type == f"deepseek-r1-distill-{size.lower()}"
    assert sorted({a for _, a in MODELS.values()}) == ["llama", "qwen2"]


def test_the_template_is_the_official_one_with_only_the_last_reply_branch_added():
    assert SPEC.jinja == TRAINING_JINJA != OFFICIAL_JINJA
    assert OFFICIAL_JINJA.count(OFFICIAL_REPLY) == 1
    assert TRAINING_JINJA.replace(REASONING_REPLY, "", 1) == OFFICIAL_JINJA


def test_tool_use_is_refused_since_the_official_template_reads_no_tools():
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": "", "tool_calls": json.dumps(
                    [{"type": "function", "function": {"name": "w", "arguments": "{}"}}])}]
    with pytest.raises(ValueError, match="template 'deepseek-r1' has no tool format"):
        Template(SPEC).render(messages)


def test_the_distill_tokens_sit_at_the_distills_ids(tokenizers):
    for base, tokens in DISTILL_TOKENS.items():
        for token_id, text in tokens.items():
            assert tokenizers[base].convert_tokens_to_ids(text) == token_id


EARLIER_REASONING_INLINE = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
    {"role": "user", "content": "Bye"}]


@pytest.mark.parametrize("model_type,base", [("deepseek-r1-distill-qwen-7b", "qwen2"),
                                             ("deepseek-r1-distill-llama-8b", "llama3")])
def test_render_equals_the_official_chat_template(tokenizers, model_type, base):
    registry = load_plugins().registry
    spec = registry.get("templates", registry.get("models", model_type).template)
    conversations = [*CONVERSATIONS.values(), EARLIER_REASONING_INLINE]
    assert_template_parity(spec, tokenizers[base], conversations)
    for messages in conversations:
        if messages[-1]["role"] == "user":
            prompt = Template.for_tokenizer(spec, tokenizers[base]).render(messages, True)
            assert prompt.endswith("<｜Assistant｜><think>\n")


# (messages, how the earlier reply shows, what opens the trained last reply)
FORMS = {"reasoning_content": (REASONING, "5", ""), "inline": (INLINE, "\n\n5", "<think>\n")}


@pytest.mark.parametrize("form", FORMS)
def test_the_last_reply_renders_its_reasoning_as_the_model_emits_it(tokenizers, form):
    """The generation prompt for the last question followed by what the distill writes after
    it; the earlier reply loses its reasoning as the official template drops it (all that
    precedes </think>)."""
    messages, earlier, _ = FORMS[form]
    official = tokenizers["qwen2"].apply_chat_template
    text = Template(SPEC).render(messages)
    assert text == official(messages[:-1], tokenize=False, add_generation_prompt=True) + LAST_REPLY
    assert text == (BOS + "You are a careful solver.<｜User｜>What is 2+3?<｜Assistant｜>" +
                    earlier + EOS +
                    "<｜User｜>And times 4?<｜Assistant｜><think>\n" + LAST_REPLY)
    # the official template alone drops the last reply's reasoning too
    assert "<think>" not in official(messages, tokenize=False)


@pytest.mark.parametrize("base", list(DISTILL_TOKENS))
@pytest.mark.parametrize("form", FORMS)
def test_training_ids_equal_the_tokenizers_and_the_reasoning_trains(tokenizers, base, form):
    """What follows the generation prompt trains (inline reasoning: with the <think> line it
    is written with); the earlier reply trains without its reasoning."""
    messages, earlier, opened = FORMS[form]
    tokenizer = tokenizers[base]
    template = Template.for_tokenizer(SPEC, tokenizer)
    last = opened + LAST_REPLY
    for scope, replies in [("last", [last]), ("all", [earlier + EOS, last])]:
        assert_trained_spans(template, tokenizer, messages, replies, loss_scope=scope)
    assert marked(template.pieces(messages, loss_scope="last")).endswith(f"[[{last}]]")


def test_preview_shows_a_reasoning_conversation_as_the_template_renders_it(run_cli, tmp_path):
    data = tmp_path / "r1.jsonl"
    messages = [{"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "<think>\nGreet back.\n</think>\n\nHello!"},
                {"role": "user", "content": "Bye"},
                {"role": "assistant", "content": "<think>\nSay bye.\n</think>\n\nBye!"}]
    data.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    result = run_cli("datasets", "preview", "--dataset", str(data), "--template", "deepseek-r1",
                     "--loss-scope", "all")
    assert result.exit_code == 0, result.output
    assert (f"{BOS}<｜User｜>Hi<｜Assistant｜>[[\n\nHello!{EOS}]]<｜User｜>Bye<｜Assistant｜>"
            f"[[<think>\nSay bye.\n</think>\n\nBye!{EOS}]]") in result.output


def test_a_tiny_qwen2_distill_trains_and_reloads_with_the_template(tmp_path, tokenizers):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = tokenizers["qwen2"]
    model_dir = save_tiny_model(Qwen2ForCausalLM, Qwen2Config, tokenizer, tmp_path / "tiny-r1",
                                bos_token_id=151646, eos_token_id=151643)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n"
                            for m in (INLINE, CONVERSATIONS["chinese"]) * 2), encoding="utf-8")
    trained = train_and_reload(load_plugins().registry, "deepseek-r1-distill-qwen-1.5b",
                               model_dir, data, tmp_path / "output")
    assert trained.saved["template"] == "deepseek-r1"
    assert trained.tokenizer.decode(trained.inputs["input_ids"][0]).endswith(
        "<｜Assistant｜><think>\n")
