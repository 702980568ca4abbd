"""Baichuan-13B-Chat and Baichuan2 chat models. Every one runs the code of its model repository
(``--trust-remote-code``); nothing here imports torch or transformers.

Both generations mark turns with two reserved tokens whose ids are the same, 195 (user) and
196 (assistant), in the models' generation_config.json. Their text differs because the two
vocabularies number their reserved tokens differently: ``<reserved_102>`` / ``<reserved_103>``
in Baichuan-13B, ``<reserved_106>`` / ``<reserved_107>`` in Baichuan2 (FastChat's
conversation.py, templates "baichuan-chat" and "baichuan2-chat"). The templates write that
text; the tokenizer maps it to ids 195 / 196.
"""

from __future__ import annotations

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec

FAMILY = "baichuan"
# The model_type in config.json of Baichuan-13B and Baichuan2 alike (their remote code's).
CONFIG_MODEL_TYPES = ("baichuan",)
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}

# Baichuan-13B-Chat, modeling_baichuan.py `_build_chat_input` (used by `chat`; a copy is in
# hiyouga/LLaMA-Factory tests/modeling_baichuan.py): for each turn
#   user:      [user_token_id 195] + tokenizer.encode(content)
#   assistant: [assistant_token_id 196] + tokenizer.encode(content) + [eos_token_id]
# then [196] to prompt a reply. The official code rejects a system message; here one is written
# as plain text before the first turn, as ms-swift's "baichuan" template does ({{SYSTEM}} prefix).
BAICHUAN_TEMPLATE = TemplateSpec(
    name="baichuan",
    special_tokens=SPECIAL_TOKENS,
    system_format="{content}",
    user_format="<reserved_102>{content}",  # id 195 in the Baichuan-13B vocabulary
    assistant_prefix="<reserved_103>",  # id 196
    assistant_suffix="{eos_token}",
    stop_words=("<reserved_102>",),
    description="Baichuan-13B-Chat: <reserved_102>query<reserved_103>reply</s> (ids 195/196)",
)

# Baichuan2-*-Chat, generation_utils.py `build_chat_input` (baichuan-inc/Baichuan2-13B-Chat):
#   tokenizer.encode(system) + for each turn [195] + encode(query) + [196] + encode(reply)
#   + [196] when the last message is not the assistant's.
# No end-of-sequence token follows the replies of the history; generation stops at eos
# (</s>, id 2). For training, the last reply is followed by </s> so that the model learns to
# stop, as in ms-swift's "baichuan" template (chat_sep [], suffix eos): this needs the jinja
# form, the parts form puts the suffix after every reply.
BAICHUAN2_JINJA = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{{ '<reserved_106>' + message['content'] }}"
    "{% else %}{{ '<reserved_107>' + message['content'] }}"
    "{% if loop.last %}{{ eos_token }}{% endif %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<reserved_107>' }}{% endif %}"
)
BAICHUAN2_TEMPLATE = TemplateSpec(
    name="baichuan2",
    jinja=BAICHUAN2_JINJA,
    special_tokens=SPECIAL_TOKENS,
    assistant_suffix="{eos_token}",
    stop_words=("<reserved_106>",),
    description="Baichuan2 chat: system<reserved_106>query<reserved_107>reply (ids 195/196)",
)

TEMPLATES = (BAICHUAN_TEMPLATE, BAICHUAN2_TEMPLATE)

# model_type: (template, ModelScope id, Hugging Face id, requires, description)
# Ids from ms-swift swift/llm/model/model/baichuan.py (ModelScope first, Hugging Face second).
# requires: sentencepiece for every tokenizer; Baichuan2's modeling code imports accelerate;
# the 4-bit checkpoints are bitsandbytes-quantized (ms-swift pins bitsandbytes<0.41.2,
# accelerate<0.26 for them; ms-swift pins transformers<4.34 for Baichuan-13B).
MODELS = {
    "baichuan-13b-chat": (
        "baichuan", "baichuan-inc/Baichuan-13B-Chat", "baichuan-inc/Baichuan-13B-Chat",
        ("sentencepiece",), "Baichuan-13B-Chat (remote code written for transformers<4.34)"),
    "baichuan2-7b-chat": (
        "baichuan2", "baichuan-inc/Baichuan2-7B-Chat", "baichuan-inc/Baichuan2-7B-Chat",
        ("sentencepiece", "accelerate"), "Baichuan2-7B-Chat"),
    "baichuan2-13b-chat": (
        "baichuan2", "baichuan-inc/Baichuan2-13B-Chat", "baichuan-inc/Baichuan2-13B-Chat",
        ("sentencepiece", "accelerate"), "Baichuan2-13B-Chat"),
    "baichuan2-7b-chat-int4": (
        "baichuan2", "baichuan-inc/Baichuan2-7B-Chat-4bits",
        "baichuan-inc/Baichuan2-7B-Chat-4bits", ("sentencepiece", "accelerate", "bitsandbytes"),
        "Baichuan2-7B-Chat, Baichuan's own 4-bit (bitsandbytes) checkpoint"),
    "baichuan2-13b-chat-int4": (
        "baichuan2", "baichuan-inc/Baichuan2-13B-Chat-4bits",
        "baichuan-inc/Baichuan2-13B-Chat-4bits", ("sentencepiece", "accelerate", "bitsandbytes"),
        "Baichuan2-13B-Chat, Baichuan's own 4-bit (bitsandbytes) checkpoint"),
}


def model_specs() -> list[ModelSpec]:
    return [
        ModelSpec(
            model_type=model_type,
            family=FAMILY,
            template=template,
            hub_ids={"modelscope": modelscope_id, "huggingface": huggingface_id},
            lora_target_modules=("W_pack",),  # the fused q/k/v projection of BaichuanAttention
            config_model_types=CONFIG_MODEL_TYPES,
            requires=requires,
            requires_remote_code=True,
            description=description,
        )
        for model_type, (template, modelscope_id, huggingface_id, requires, description)
        in MODELS.items()
    ]


@hookimpl
def register_models(register):
    for spec in model_specs():
        register(spec)


@hookimpl
def register_templates(register):
    for template in TEMPLATES:
        register(template)
