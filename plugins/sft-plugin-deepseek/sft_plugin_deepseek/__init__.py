"""DeepSeek-R1 distills: DeepSeek-R1-Distill-Qwen 1.5B/7B/14B/32B (Qwen2ForCausalLM, built on
Qwen2.5) and DeepSeek-R1-Distill-Llama 8B/70B (LlamaForCausalLM, on Llama-3.1-8B and
Llama-3.3-70B-Instruct), all native to transformers.

Hub ids: ms-swift's ``Model('deepseek-ai/...', 'deepseek-ai/...')`` pairs
(modelscope/ms-swift, swift/llm/model/model/deepseek.py): the same repository id on both hubs.

``deepseek-r1.jinja`` is the ``chat_template`` of the distills' tokenizer_config.json, byte for
byte: one text for the Qwen and the Llama distills (deepseek-ai/DeepSeek-R1-Distill-Qwen-*/
-Llama-* on the Hugging Face Hub, the revision of February 2025 whose generation prompt opens
``<think>\\n``; a line-broken copy is ggml-org/llama.cpp
models/templates/deepseek-ai-DeepSeek-R1-Distill-Llama-8B.jinja). Both tokenizers write the same
``<｜begin▁of▁sentence｜>`` / ``<｜end▁of▁sentence｜>`` texts (ids 151646/151643 in the Qwen2.5
vocabulary, 128000/128001 in Llama 3's).

Reasoning data: the official template drops everything before ``</think>`` from every reply,
the last one included, and reads no ``reasoning_content``, so it cannot render a reply that is to
be trained with its reasoning. The registered template (``TRAINING_JINJA``) is the official one
with one branch added for the last message of a conversation, when it is a reply: with
``reasoning_content`` it renders as the distills emit it after their generation prompt,
``<｜Assistant｜><think>\\n{reasoning}\\n</think>\\n\\n{content}<｜end▁of▁sentence｜>``; with
reasoning written inline (``<think>...</think>`` in its content, ms-swift's data) its content is
kept as written, as ms-swift's and LLaMA-Factory's deepseek-r1 templates keep the last
response's thinking. Everything else renders exactly as the official template does: earlier
replies lose their reasoning, prompts end with ``<｜Assistant｜><think>\\n``. The loss covers what
the last reply adds to that generation prompt: the reasoning, ``</think>``, the answer and the
end-of-sentence token (inline reasoning: with the ``<think>`` line it is written with).
"""

from __future__ import annotations

from importlib.resources import files

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec

OFFICIAL_JINJA = (files(__name__) / "deepseek-r1.jinja").read_text(encoding="utf-8")
# Where the official template writes a reply without tool calls.
OFFICIAL_REPLY = ("{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}"
                  "{% endif %}")
# The last reply keeps its reasoning: reasoning_content as the distills write it, else its
# content as written (inline <think>...</think>, as ms-swift and LLaMA-Factory train it).
REASONING_REPLY = ("{% if loop.last %}{% if message['reasoning_content'] %}{% set content = "
                   "'<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' + content %}"
                   "{% else %}{% set content = message['content'] %}{% endif %}{% endif %}")
TRAINING_JINJA = OFFICIAL_JINJA.replace(OFFICIAL_REPLY, OFFICIAL_REPLY + REASONING_REPLY)

TOKENS = {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"}
TEMPLATES = (
    TemplateSpec(name="deepseek-r1", jinja=TRAINING_JINJA, assistant_suffix=TOKENS["eos_token"],
                 special_tokens=TOKENS, stop_words=(TOKENS["eos_token"],),
                 reasoning=True,
                 description="DeepSeek-R1 distills: <｜User｜>/<｜Assistant｜>, earlier reasoning "
                             "dropped, <think> opened by the generation prompt"),
)

# Attention projections, as sft-plugin-qwen (Qwen2.5) and sft-plugin-llama (Llama 3.1) train.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj")
# model_type: (size, base architecture)
MODELS = {
    "deepseek-r1-distill-qwen-1.5b": ("Qwen-1.5B", "qwen2"),
    "deepseek-r1-distill-qwen-7b": ("Qwen-7B", "qwen2"),
    "deepseek-r1-distill-qwen-14b": ("Qwen-14B", "qwen2"),
    "deepseek-r1-distill-qwen-32b": ("Qwen-32B", "qwen2"),
    "deepseek-r1-distill-llama-8b": ("Llama-8B", "llama"),
    "deepseek-r1-distill-llama-70b": ("Llama-70B", "llama"),
}


@hookimpl
def register_templates(register):
    for template in TEMPLATES:
        register(template)


@hookimpl
def register_models(register):
    for model_type, (size, architecture) in MODELS.items():
        repo = f"deepseek-ai/DeepSeek-R1-Distill-{size}"
        register(ModelSpec(
            model_type=model_type,
            family="deepseek",
            template="deepseek-r1",
            hub_ids={"huggingface": repo, "modelscope": repo},
            lora_target_modules=LORA_TARGETS,
            config_model_types=(architecture,),
            description=f"DeepSeek-R1-Distill-{size} (reasoning; {architecture} architecture)",
        ))
