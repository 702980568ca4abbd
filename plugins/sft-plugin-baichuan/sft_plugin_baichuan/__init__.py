"""Baichuan chat models. Baichuan2-7B-Chat is converted on load into transformers' Llama
(``native.py``: the fused W_pack split into q/k/v, Baichuan2's normalised lm_head written as
it is used) and runs without remote code; the other Baichuan types are listed and refused
with the reason (ALiBi 13B models, Baichuan's own 4-bit files). Nothing here imports torch or
transformers.

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

# Why a listed model type cannot run, and what to use instead (ModelSpec.unsupported).
ALIBI = ("{name} uses ALiBi attention, which transformers has no native architecture for, "
         "and its remote code (written for transformers 4) is not supported. Use "
         "baichuan2-7b-chat (Baichuan2-7B-Chat, converted to transformers' Llama on load).")
OWN_4BIT = ("{name} stores its weights in Baichuan's own bitsandbytes 4-bit format, read only "
            "by its remote code (written for transformers 4 and bitsandbytes<0.41.2). Use "
            "baichuan2-7b-chat with --quantization-bit 4: the same model, quantized on load.")
# model_type: (template, ModelScope id, Hugging Face id, description, unsupported)
# Ids from ms-swift swift/llm/model/model/baichuan.py (ModelScope first, Hugging Face second).
MODELS = {
    "baichuan-13b-chat": (
        "baichuan", "baichuan-inc/Baichuan-13B-Chat", "baichuan-inc/Baichuan-13B-Chat",
        "Baichuan-13B-Chat (not supported: ALiBi)",
        ALIBI.format(name="Baichuan-13B-Chat")),
    "baichuan2-7b-chat": (
        "baichuan2", "baichuan-inc/Baichuan2-7B-Chat", "baichuan-inc/Baichuan2-7B-Chat",
        "Baichuan2-7B-Chat, converted to transformers' Llama on load (no remote code)", ""),
    "baichuan2-13b-chat": (
        "baichuan2", "baichuan-inc/Baichuan2-13B-Chat", "baichuan-inc/Baichuan2-13B-Chat",
        "Baichuan2-13B-Chat (not supported: ALiBi)", ALIBI.format(name="Baichuan2-13B-Chat")),
    "baichuan2-7b-chat-int4": (
        "baichuan2", "baichuan-inc/Baichuan2-7B-Chat-4bits",
        "baichuan-inc/Baichuan2-7B-Chat-4bits",
        "Baichuan2-7B-Chat, Baichuan's own 4-bit checkpoint (not supported: use "
        "baichuan2-7b-chat --quantization-bit 4)",
        OWN_4BIT.format(name="Baichuan2-7B-Chat-4bits")),
    "baichuan2-13b-chat-int4": (
        "baichuan2", "baichuan-inc/Baichuan2-13B-Chat-4bits",
        "baichuan-inc/Baichuan2-13B-Chat-4bits",
        "Baichuan2-13B-Chat, Baichuan's own 4-bit checkpoint (not supported: ALiBi)",
        ALIBI.format(name="Baichuan2-13B-Chat-4bits")),
}
# The converted model is transformers' Llama: LoRA on its attention projections, which the
# official W_pack held fused.
NATIVE_LORA_TARGETS = ("q_proj", "k_proj", "v_proj")
# sentencepiece (with protobuf, which sdk.models.native.require_protobuf asks for) reads
# tokenizer.model.
NATIVE_REQUIRES = ("sentencepiece",)


def model_specs() -> list[ModelSpec]:
    specs = []
    for model_type, (template, modelscope_id, huggingface_id, description, unsupported) \
            in MODELS.items():
        native = {} if unsupported else dict(
            loader="sft_plugin_baichuan.native:load",
            tokenizer_loader="sft_plugin_baichuan.native:load_tokenizer",
            lora_target_modules=NATIVE_LORA_TARGETS, requires=NATIVE_REQUIRES,
            converted_to="llama")
        specs.append(ModelSpec(
            model_type=model_type, family=FAMILY, template=template,
            hub_ids={"modelscope": modelscope_id, "huggingface": huggingface_id},
            config_model_types=CONFIG_MODEL_TYPES, description=description,
            unsupported=unsupported, **native))
    return specs


@hookimpl
def register_models(register):
    for spec in model_specs():
        register(spec)


@hookimpl
def register_templates(register):
    for template in TEMPLATES:
        register(template)
