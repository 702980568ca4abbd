"""ChatGLM plugin: official prompt formats, trained spans, registrations and a tiny
transformers-native GLM (GlmForCausalLM) trained, saved and reloaded.

The renderings are compared with literal strings of the official formats (sources cited at
each); the trained spans are checked with stand-in tokenizers from shared/data/tokenizers,
given the GLM special tokens (which spans are trained depends on the text, not on the
vocabulary). test_chatglm_native.py checks ChatGLM2/3's ids with their real tokenizer and
official code; GLM-4's tokenizer files are not available offline.
"""

import re

import pytest
from sft_plugin_chatglm import (
    CHATGLM3_JINJA,
    CONVERTED_MODELS,
    GLM4_0414_MODELS,
    GLM4_JINJA,
    NATIVE_MODELS,
    TEMPLATES,
)

from conftest import CONVERSATIONS as STANDARD
from conftest import (
    LLAMA_CPP_CONVERSATION,
    TOKENIZERS,
    save_tiny_model,
    trained_text,
)
from sdk.plugins import load_plugins
from sdk.templates.engine import Template, compile_jinja
from sdk.testing import export_merged, train_and_reload

SPECS = {spec.name: spec for spec in TEMPLATES}
ALL_MODELS = {**CONVERTED_MODELS, **NATIVE_MODELS, **GLM4_0414_MODELS}

# llama.cpp's expected outputs for the official ChatGLM3 and GLM-4 templates are quoted below
# (with add_generation_prompt).
LLAMA_CPP = LLAMA_CPP_CONVERSATION
SINGLE = STANDARD["single turn"]
CHINESE = STANDARD["chinese"]
MULTI = [{"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"},
         {"role": "user", "content": "床前明月光"},
         {"role": "assistant", "content": "疑是地上霜。"}]

# Official templates, verbatim, to show that ours render the same text.
# ChatGLM3: THUDM/chatglm3-6b tokenizer_config.json chat_template (rev 103caa4).
OFFICIAL_CHATGLM3 = (
    "{% for message in messages %}{% if loop.first %}[gMASK]sop<|{{ message['role'] }}|>\n"
    " {{ message['content'] }}{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
# GLM-4: THUDM/glm-4-9b-chat tokenizer_config.json chat_template, as llama.cpp's
# tests/test-chat-template.cpp quotes it (its tool prompt text shortened to "......").
OFFICIAL_GLM4 = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n"
    "你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具"
    "{% set tools = item['tools'] %}{% for tool in tools %}{% if tool['type'] == 'function' %}"
    "\n\n## {{ tool['function']['name'] }}\n\n{{ tool['function'] | tojson(indent=4) }}\n......"
    "{% endif %}{% endfor %}{% endif %}{% if item['content'] %}<|{{ item['role'] }}|>"
    "{{ item['metadata'] }}\n{{ item['content'] }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}")

# (model type, messages, add_generation_prompt) -> the exact text of the official format.
EXPECTED = {
    # ChatGLM2: tokenization_chatglm.py of THUDM/chatglm2-6b, build_prompt
    # ("[Round {i}]\n\n问：{q}\n\n答：{r}\n\n", rounds from 1); the final reply is what
    # ChatGLM2's ptuning/main.py trains: encoded on its own (the " ": SentencePiece's word-start
    # mark), then the eos "</s>". The [gMASK] sop prefix is ids the tokenizer adds
    # (get_prefix_tokens), not text.
    ("chatglm2-6b", "single", True): "[Round 1]\n\n问：Who are you?\n\n答：",
    ("chatglm2-6b", "single", False): "[Round 1]\n\n问：Who are you?\n\n",
    ("chatglm2-6b", "llama.cpp", True): (
        "You are a helpful assistant[Round 1]\n\n问：Hello\n\n答：Hi there\n\n"
        "[Round 2]\n\n问：Who are you\n\n答：   I am an assistant   \n\n"
        "[Round 3]\n\n问：Another question\n\n答："),
    ("chatglm2-6b", "multi", False): (
        "[Round 1]\n\n问：Hi\n\n答：Hello!\n\n"
        "[Round 2]\n\n问：床前明月光\n\n答： 疑是地上霜。</s>"),
    ("chatglm2-6b-32k", "chinese", False): (
        "你是一个诗人。[Round 1]\n\n问：床前明月光\n\n答： 疑是地上霜。</s>"),
    # ChatGLM3: llama.cpp tests/test-chat-template.cpp, expected output of the official
    # THUDM/chatglm3-6b template; complete conversations end with the end-of-turn "<|user|>".
    ("chatglm3-6b", "llama.cpp", True): (
        "[gMASK]sop<|system|>\n You are a helpful assistant<|user|>\n Hello<|assistant|>\n"
        " Hi there<|user|>\n Who are you<|assistant|>\n    I am an assistant   <|user|>\n"
        " Another question<|assistant|>"),
    ("chatglm3-6b", "single", True): "[gMASK]sop<|user|>\n Who are you?<|assistant|>",
    ("chatglm3-6b", "single", False): "[gMASK]sop<|user|>\n Who are you?",
    ("chatglm3-6b", "multi", False): (
        "[gMASK]sop<|user|>\n Hi<|assistant|>\n Hello!<|user|>\n 床前明月光<|assistant|>\n"
        " 疑是地上霜。<|user|>"),
    ("chatglm3-6b-32k", "chinese", False): (
        "[gMASK]sop<|system|>\n 你是一个诗人。<|user|>\n 床前明月光<|assistant|>\n"
        " 疑是地上霜。<|user|>"),
    # GLM-4: llama.cpp tests/test-chat-template.cpp, expected output of the official
    # THUDM/glm-4-9b-chat template; complete conversations end with the end-of-turn "<|user|>".
    ("glm4-9b-chat", "llama.cpp", True): (
        "[gMASK]<sop><|system|>\nYou are a helpful assistant<|user|>\nHello<|assistant|>\n"
        "Hi there<|user|>\nWho are you<|assistant|>\n   I am an assistant   <|user|>\n"
        "Another question<|assistant|>"),
    ("glm4-9b-chat", "single", True): "[gMASK]<sop><|user|>\nWho are you?<|assistant|>",
    ("glm4-9b-chat", "single", False): "[gMASK]<sop><|user|>\nWho are you?",
    ("glm4-9b-chat", "multi", False): (
        "[gMASK]<sop><|user|>\nHi<|assistant|>\nHello!<|user|>\n床前明月光<|assistant|>\n"
        "疑是地上霜。<|user|>"),
    # GLM-4-0414: the same text as GLM-4's for these (the official 0414 loop writes
    # "<|role|>\n" + content too); complete conversations end with the end-of-turn "<|user|>".
    ("glm4-9b-0414", "llama.cpp", True): (
        "[gMASK]<sop><|system|>\nYou are a helpful assistant<|user|>\nHello<|assistant|>\n"
        "Hi there<|user|>\nWho are you<|assistant|>\n   I am an assistant   <|user|>\n"
        "Another question<|assistant|>"),
    ("glm4-32b-0414", "multi", False): (
        "[gMASK]<sop><|user|>\nHi<|assistant|>\nHello!<|user|>\n床前明月光<|assistant|>\n"
        "疑是地上霜。<|user|>"),
    ("glm4-9b-chat-hf", "chinese", False): (
        "[gMASK]<sop><|system|>\n你是一个诗人。<|user|>\n床前明月光<|assistant|>\n疑是地上霜。<|user|>"),
    ("glm4-9b-chat-hf", "chinese", True): (
        "[gMASK]<sop><|system|>\n你是一个诗人。<|user|>\n床前明月光<|assistant|>\n疑是地上霜。<|user|>"
        "<|assistant|>"),
}
CONVERSATIONS = {"single": SINGLE, "llama.cpp": LLAMA_CPP, "multi": MULTI, "chinese": CHINESE}

# The special tokens each format writes in its text, given to the stand-in tokenizer.
SPECIAL = {
    "chatglm2": ["</s>"],
    "chatglm3": ["[gMASK]", "sop", "<|system|>", "<|user|>", "<|assistant|>", "</s>"],
    "glm4": ["[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|endoftext|>"],
}
SPECIAL["glm4-0414"] = SPECIAL["glm4"]
END = {"chatglm2": "</s>", "chatglm3": "<|user|>", "glm4": "<|user|>", "glm4-0414": "<|user|>"}


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


def stand_in_tokenizer(template_name):
    from transformers import AutoTokenizer

    # SentencePiece (Llama-2) for ChatGLM2/3, whose tokenizers are SentencePiece models; BPE
    # (Qwen2) for GLM-4, whose tokenizer is a tiktoken BPE.
    folder = "qwen2" if template_name.startswith("glm4") else "llama2"
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / folder)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[template_name]})
    return tokenizer


@pytest.mark.parametrize("model_type", sorted(ALL_MODELS))
def test_every_model_type_is_registered_with_its_template_and_hub_ids(registry, model_type):
    spec = registry.get("models", model_type)
    assert re.fullmatch(r"[a-z0-9.]+(-[a-z0-9.]+)*", model_type)
    assert registry.get("templates", spec.template).name == spec.template
    assert set(spec.hub_ids) == {"huggingface", "modelscope"}
    assert spec.hub_ids["modelscope"].startswith("ZhipuAI/")
    assert spec.hub_ids["huggingface"].startswith("zai-org/")
    assert spec.family == "chatglm"
    assert not spec.requires_remote_code  # ChatGLM2/3 are converted, GLM-4 is Zhipu's native
    assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")
    assert spec.converted_to == ("glm" if model_type in CONVERTED_MODELS else "")


@pytest.mark.parametrize("model_type, name, generation_prompt", sorted(EXPECTED))
def test_render_gives_the_official_text(render_cli, model_type, name, generation_prompt):
    text = render_cli(model_type, CONVERSATIONS[name], generation_prompt)
    assert text == EXPECTED[model_type, name, generation_prompt]


@pytest.mark.parametrize("ours, official", [(CHATGLM3_JINJA, OFFICIAL_CHATGLM3),
                                            (GLM4_JINJA, OFFICIAL_GLM4)])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_the_official_template_renders_the_same_text_but_the_final_end_of_turn(
        ours, official, name):
    messages = CONVERSATIONS[name]
    for generation_prompt in (False, True):
        expected = compile_jinja(official).render(messages=messages,
                                                  add_generation_prompt=generation_prompt)
        if messages[-1]["role"] == "assistant":
            expected = expected.removesuffix("<|assistant|>") + "<|user|>" + (
                "<|assistant|>" if generation_prompt else "")
        assert compile_jinja(ours).render(
            messages=messages, add_generation_prompt=generation_prompt) == expected


def test_an_empty_system_prompt_is_left_out_by_glm4_as_officially():
    messages = [{"role": "system", "content": ""}, *SINGLE]
    assert Template(SPECS["glm4"]).render(messages, add_generation_prompt=True) == (
        "[gMASK]<sop><|user|>\nWho are you?<|assistant|>")
    # GLM-4-0414's template writes every system message, empty or not
    assert Template(SPECS["glm4-0414"]).render(messages, add_generation_prompt=True) == (
        "[gMASK]<sop><|system|>\n<|user|>\nWho are you?<|assistant|>")


@pytest.mark.parametrize("template_name", sorted(SPECS))
def test_ids_are_the_tokenizers_and_only_replies_with_their_end_are_trained(template_name):
    tokenizer = stand_in_tokenizer(template_name)
    template = Template(SPECS[template_name])  # the spec's own eos, not Qwen2's
    messages = [{"role": "system", "content": "你是一个诗人。"}, *MULTI]
    text = template.render(messages)
    input_ids, labels = template.encode(tokenizer, messages)
    # ChatGLM2 lets the tokenizer add its prefix ids (the Llama-2 stand-in adds its <s>)
    with_special = SPECS[template_name].add_special_tokens
    assert with_special == (template_name == "chatglm2")
    assert input_ids == tokenizer(text, add_special_tokens=with_special)["input_ids"]

    def trained(labels):
        # SentencePiece adds word-start spaces
        return trained_text(tokenizer, input_ids, labels).replace(" ", "")

    end = END[template_name]
    # ChatGLM2's past replies are followed by "\n\n[Round N]": only the final one has an eos.
    first = "Hello!" if template_name == "chatglm2" else "Hello!" + end
    assert trained(labels) == first + "疑是地上霜。" + end
    _, last_only = template.encode(tokenizer, messages, loss_scope="last")
    assert trained(last_only) == "疑是地上霜。" + end


def test_generation_stops_on_the_next_role_token_and_the_eos():
    assert Template(SPECS["glm4"]).stop_words() == ["<|user|>", "<|observation|>",
                                                    "<|endoftext|>"]
    assert Template(SPECS["chatglm3"]).stop_words() == ["<|user|>", "<|observation|>", "</s>"]
    assert Template(SPECS["chatglm2"]).stop_words() == ["</s>"]


def test_a_tiny_native_glm_trains_saves_and_reloads(tmp_path, identity_data, registry):
    from transformers import GlmConfig, GlmForCausalLM

    tokenizer = stand_in_tokenizer("glm4")
    model_dir = save_tiny_model(GlmForCausalLM, GlmConfig, tokenizer, tmp_path / "tiny-glm",
                                head_dim=8,
                                eos_token_id=tokenizer.convert_tokens_to_ids("<|user|>"),
                                pad_token_id=tokenizer.pad_token_id)

    trained = train_and_reload(registry, "glm4-9b-chat", model_dir, identity_data,
                               tmp_path / "out", seed=0)
    assert (trained.result.checkpoint / "adapter_model.safetensors").is_file()
    assert trained.saved["template"] == "glm4"
    assert trained.template.spec is SPECS["glm4"]
    assert trained.template.render(SINGLE, add_generation_prompt=True) == (
        Template(SPECS["glm4"]).render(SINGLE, add_generation_prompt=True))
    assert trained.inputs["input_ids"][0, 0] == trained.tokenizer.convert_tokens_to_ids("[gMASK]")


def test_a_tiny_glm4_trains_packed_reloads_and_exports_merged(tmp_path, identity_data,
                                                              registry):
    """GLM-4-0414's architecture, transformers' Glm4ForCausalLM (partial rotary, fused
    gate_up_proj, the extra post-attention / post-MLP norms), loaded as published."""
    from transformers import AutoTokenizer, Glm4Config, Glm4ForCausalLM

    # a small vocabulary keeps it quick: Llama 2's with GLM's special tokens
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "llama2")
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL["glm4-0414"]})
    model_dir = save_tiny_model(Glm4ForCausalLM, Glm4Config, tokenizer, tmp_path / "tiny-glm4",
                                head_dim=8,
                                eos_token_id=tokenizer.convert_tokens_to_ids("<|user|>"),
                                pad_token_id=tokenizer.pad_token_id)
    trained = train_and_reload(registry, "glm4-9b-0414", model_dir, identity_data,
                               tmp_path / "out", lora_dropout=0.0)
    assert trained.saved["packing"] is True  # the packing probe passed
    assert trained.saved["template"] == "glm4-0414"
    assert type(trained.model.get_base_model()).__name__ == "Glm4ForCausalLM"
    assert type(export_merged(registry, trained, tmp_path / "merged")).__name__ == "Glm4ForCausalLM"
