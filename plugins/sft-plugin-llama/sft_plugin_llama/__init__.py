"""Llama model types: Llama-2-chat, Llama-3 / 3.1 / 3.2 / 3.3 Instruct, Chinese-LLaMA-2 and
Chinese-Alpaca-2 (hfl). All are LlamaForCausalLM, native to transformers.

Hub ids are the ``Model('<ModelScope id>', '<Hugging Face id>')`` pairs of ms-swift
(modelscope/ms-swift, swift/llm/model/model/llama.py), as are the ignored weight files.

The chat templates are the official ones, kept byte for byte in this package (NAME.jinja):

- ``llama2.jinja``: meta-llama/Llama-2-7b-chat-hf tokenizer_config.json ``chat_template``
  (the same text as /work/shared/data/tokenizers/llama2/chat_template.jinja).
- ``llama3.jinja``: meta-llama/Meta-Llama-3-8B-Instruct tokenizer_config.json
  (= /work/shared/data/tokenizers/llama3/chat_template.jinja).
- ``llama3.1.jinja``: meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json (shared by 3.1 70B,
  405B and 3.3 70B): a system block with "Cutting Knowledge Date" and a fixed "26 Jul 2024".
  Llama-3.3-70B-Instruct's template is the same text byte for byte: compared with llama.cpp's
  copy of it (ye-NX/llama.cpp, a llama.cpp fork, models/templates/
  meta-llama-Llama-3.3-70B-Instruct.jinja, commit b354d7c9; the test pins its sha256).
- ``llama3.2.jinja``: meta-llama/Llama-3.2-1B-Instruct / 3B-Instruct tokenizer_config.json:
  as 3.1 without builtin tools, and today's date through ``strftime_now``.
  Both 3.x texts were taken from microsoft/onnxruntime-extensions
  shared/api/chat_template.cc (commit 8823a54f), which keeps these templates keyed by the
  meta-llama repo ids; its Llama-2 and Llama-3 copies equal the shared tokenizer files exactly.
- ``chinese-alpaca-2.jinja``: the Llama-2 [INST] <<SYS>> format as the Chinese-LLaMA-Alpaca-2
  project builds it (ymcui/Chinese-LLaMA-Alpaca-2, scripts/inference/gradio_demo.py and
  scripts/training/build_dataset.py): the reply is followed by ``</s>`` with no space and
  texts are not stripped; default system "You are a helpful assistant. 你是一个乐于助人的助手。".
"""

from __future__ import annotations

from importlib.resources import files

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec
from sdk.templates.tool_calls import llama3_json

LORA_TARGETS = ("q_proj", "k_proj", "v_proj")
CONFIG_MODEL_TYPES = ("llama",)  # LlamaForCausalLM, Chinese-LLaMA-2 included
LLAMA2_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}
LLAMA3_TOKENS = {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"}
CHINESE_ALPACA_2_SYSTEM = "You are a helpful assistant. 你是一个乐于助人的助手。"


def official_jinja(name: str) -> str:
    return (files(__name__) / f"{name}.jinja").read_text(encoding="utf-8")


TEMPLATES = (
    TemplateSpec(name="llama2", jinja=official_jinja("llama2"), assistant_suffix="</s>",
                 special_tokens=LLAMA2_TOKENS, stop_words=("</s>",),
                 description="Llama-2-chat: <s>[INST] <<SYS>> ... [/INST] reply </s>"),
    TemplateSpec(name="llama3", jinja=official_jinja("llama3"), assistant_suffix="<|eot_id|>",
                 special_tokens=LLAMA3_TOKENS, stop_words=("<|eot_id|>", "<|end_of_text|>"),
                 description="Llama-3-Instruct header format, <|eot_id|> ends a turn"),
    TemplateSpec(name="llama3.1", jinja=official_jinja("llama3.1"),
                 assistant_suffix="<|eot_id|>", special_tokens=LLAMA3_TOKENS,
                 stop_words=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
                 tool_calls=llama3_json,
                 description="Llama-3.1-Instruct: Llama-3 format with a dated system block"),
    TemplateSpec(name="llama3.2", jinja=official_jinja("llama3.2"),
                 assistant_suffix="<|eot_id|>", special_tokens=LLAMA3_TOKENS,
                 stop_words=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
                 tool_calls=llama3_json,
                 description="Llama-3.2-Instruct: Llama-3.1 format dated today"),
    TemplateSpec(name="chinese-alpaca-2", jinja=official_jinja("chinese-alpaca-2"),
                 assistant_suffix="</s>", special_tokens=LLAMA2_TOKENS, stop_words=("</s>",),
                 default_system=CHINESE_ALPACA_2_SYSTEM,
                 description="Chinese-Alpaca-2: Llama-2 [INST] format, bilingual default system"),
)

# model_type: (template, ModelScope id, Hugging Face id, ignore_patterns, description)
MODELS = {
    "llama2-7b-chat": ("llama2", "modelscope/Llama-2-7b-chat-ms",
                       "meta-llama/Llama-2-7b-chat-hf", ("*.bin",), "Llama 2 7B chat"),
    "llama2-13b-chat": ("llama2", "modelscope/Llama-2-13b-chat-ms",
                        "meta-llama/Llama-2-13b-chat-hf", ("*.bin",), "Llama 2 13B chat"),
    "llama2-70b-chat": ("llama2", "modelscope/Llama-2-70b-chat-ms",
                        "meta-llama/Llama-2-70b-chat-hf", ("*.bin",), "Llama 2 70B chat"),
    "llama3-8b-instruct": ("llama3", "LLM-Research/Meta-Llama-3-8B-Instruct",
                           "meta-llama/Meta-Llama-3-8B-Instruct", ("*.pth",),
                           "Llama 3 8B Instruct"),
    "llama3-70b-instruct": ("llama3", "LLM-Research/Meta-Llama-3-70B-Instruct",
                            "meta-llama/Meta-Llama-3-70B-Instruct", ("*.pth",),
                            "Llama 3 70B Instruct"),
    "llama3.1-8b-instruct": ("llama3.1", "LLM-Research/Meta-Llama-3.1-8B-Instruct",
                             "meta-llama/Meta-Llama-3.1-8B-Instruct", ("*.pth",),
                             "Llama 3.1 8B Instruct"),
    "llama3.1-70b-instruct": ("llama3.1", "LLM-Research/Meta-Llama-3.1-70B-Instruct",
                              "meta-llama/Meta-Llama-3.1-70B-Instruct", ("*.pth",),
                              "Llama 3.1 70B Instruct"),
    "llama3.1-405b-instruct": ("llama3.1", "LLM-Research/Meta-Llama-3.1-405B-Instruct",
                               "meta-llama/Meta-Llama-3.1-405B-Instruct", ("*.pth",),
                               "Llama 3.1 405B Instruct"),
    "llama3.3-70b-instruct": ("llama3.1", "LLM-Research/Llama-3.3-70B-Instruct",
                              "meta-llama/Llama-3.3-70B-Instruct", ("*.pth",),
                              "Llama 3.3 70B Instruct"),
    "llama3.2-1b-instruct": ("llama3.2", "LLM-Research/Llama-3.2-1B-Instruct",
                             "meta-llama/Llama-3.2-1B-Instruct", ("*.pth",),
                             "Llama 3.2 1B Instruct"),
    "llama3.2-3b-instruct": ("llama3.2", "LLM-Research/Llama-3.2-3B-Instruct",
                             "meta-llama/Llama-3.2-3B-Instruct", ("*.pth",),
                             "Llama 3.2 3B Instruct"),
    # Chinese-LLaMA-2 are base models (Llama 2 with an extended Chinese vocabulary); their
    # project fine-tunes them into Chinese-Alpaca-2 with the chinese-alpaca-2 format.
    "chinese-llama-2-7b": ("chinese-alpaca-2", "AI-ModelScope/chinese-llama-2-7b",
                           "hfl/chinese-llama-2-7b", (),
                           "Chinese-LLaMA-2 7B base model (pre-trained, not chat-tuned)"),
    "chinese-llama-2-13b": ("chinese-alpaca-2", "AI-ModelScope/chinese-llama-2-13b",
                            "hfl/chinese-llama-2-13b", (),
                            "Chinese-LLaMA-2 13B base model (pre-trained, not chat-tuned)"),
    "chinese-alpaca-2-7b": ("chinese-alpaca-2", "AI-ModelScope/chinese-alpaca-2-7b",
                            "hfl/chinese-alpaca-2-7b", (), "Chinese-Alpaca-2 7B (chat)"),
    "chinese-alpaca-2-13b": ("chinese-alpaca-2", "AI-ModelScope/chinese-alpaca-2-13b",
                             "hfl/chinese-alpaca-2-13b", (), "Chinese-Alpaca-2 13B (chat)"),
}


@hookimpl
def register_templates(register):
    for template in TEMPLATES:
        register(template)


@hookimpl
def register_models(register):
    for model_type, (template, modelscope, huggingface, ignore, description) in MODELS.items():
        register(ModelSpec(
            model_type=model_type,
            family="llama",
            template=template,
            hub_ids={"huggingface": huggingface, "modelscope": modelscope},
            lora_target_modules=LORA_TARGETS,
            config_model_types=CONFIG_MODEL_TYPES,
            ignore_patterns=ignore,
            description=description,
        ))
