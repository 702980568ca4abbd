"""InternLM (v1), InternLM2, InternLM2.5 and InternLM3 chat models. The official v1 / v2
checkpoints (remote code) are converted on load to transformers' Llama architecture (native.py);
InternLM3's load as they are, transformers knowing its config (below): no remote code runs.
Nothing here imports torch or transformers."""

from __future__ import annotations

import dataclasses

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec

FAMILY = "internlm"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}

# The default `meta_instruction` of `chat()` in modeling_internlm.py / modeling_internlm2.py
# (also ms-swift's INTERNLM_SYSTEM in swift/llm/template/template/internlm.py).
INTERNLM_SYSTEM = (
    "You are an AI assistant whose name is InternLM (书生·浦语).\n"
    "- InternLM (书生·浦语) is a conversational language model that is developed by Shanghai AI "
    "Laboratory (上海人工智能实验室). It is designed to be helpful, honest, and harmless.\n"
    "- InternLM (书生·浦语) can understand and communicate fluently in the language chosen by "
    "the user such as English and 中文."
)

# InternLM v1, modeling_internlm.py `build_inputs` of internlm/internlm-chat-7b (revision
# 739d3699446ad35bff7123c47e1e54bc9acdf79c, line 859):
#   prompt = "<s><|System|>:{meta_instruction}\n" if meta_instruction else "<s>"
#   for each past turn: "<|User|>:{query}\n<|Bot|>:{reply}<eoa>\n"
#   then "<|User|>:{query}\n<|Bot|>:"
# (the same roles as InternLM's lagent INTERNLM_META). <eoa> (id 103028) ends a reply.
INTERNLM_JINJA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% if message['content'] %}{{ '<|System|>:' + message['content'] + '\\n' }}{% endif %}"
    "{% elif message['role'] == 'user' %}{{ '<|User|>:' + message['content'] + '\\n' }}"
    "{% else %}{{ '<|Bot|>:' + message['content'] + '<eoa>\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|Bot|>:' }}{% endif %}"
)
INTERNLM_TEMPLATE = TemplateSpec(
    name="internlm",
    jinja=INTERNLM_JINJA,
    special_tokens=SPECIAL_TOKENS,
    assistant_suffix="<eoa>",
    default_system=INTERNLM_SYSTEM,
    stop_words=("{eos_token}",),
    description="InternLM v1: <s><|System|>:...\\n<|User|>:...\\n<|Bot|>:...<eoa>\\n",
)

# InternLM2 / InternLM2.5: the chat_template of internlm/internlm2-chat-7b tokenizer_config.json
# (ChatML after the bos token): what apply_chat_template and serving engines render.
#   {{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' +
#   message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}
#   {{ '<|im_start|>assistant\n' }}{% endif %}
# It adds no system turn; `build_inputs` in modeling_internlm2.py builds the same text.
# That chat_template writes no tools. They follow InternLM2-Chat's documented function-call
# format (InternLM/InternLM chat/chat_format.md, "Function Call", commit
# 1182cbbb1660bcfafbfea96f3981ed193a562cfb), its whitespace as InternLM's own code writes it:
#   - the schemas: a system turn "<|im_start|>system name=<|plugin|>\n" + the JSON list of the
#     function schemas (OpenAI's {"type": "function", ...} unwrapped) + "<|im_end|>\n", after
#     the first system turn if there is one, else first (lmdeploy's InternLM2Chat7B
#     messages2prompt, InternLM/lmdeploy lmdeploy/model.py, commit a1b86d9a3541eb75c2ec726a8242e8
#     345275189e); the JSON as lagent's Internlm2Protocol dumps it (InternLM/lagent
#     lagent/agents/internlm2_agent.py: json.dumps(schemas, ensure_ascii=False, indent=4)),
#     the layout the document shows;
#   - a call: the reply's text, then per call "<|action_start|><|plugin|>\n" + {"name": ...,
#     "parameters": arguments} as JSON + "<|action_end|>", then "<|im_end|>\n" (the document;
#     lmdeploy writes the same);
#   - a result: "<|im_start|>environment name=<|plugin|>\n" + the result + "<|im_end|>\n" (the
#     document, and lagent's format_response: role environment, name plugin).
# Without tools the text is the chat_template's (the tests render both).
INTERNLM2_JINJA = (
    "{{ bos_token }}"
    "{% set ns = namespace(schemas=[]) %}"
    "{% for tool in tools or [] %}"
    "{% set ns.schemas = ns.schemas + [tool.function if tool.function is defined else tool] %}"
    "{% endfor %}"
    "{% set plugins = '<|im_start|>system name=<|plugin|>\n' + (ns.schemas | tojson(indent=4))"
    " + '<|im_end|>\n' %}"
    "{% for message in messages %}"
    "{% if loop.first and tools and message['role'] != 'system' %}{{ plugins }}{% endif %}"
    "{% if message['role'] == 'tool' %}"
    "{{ '<|im_start|>environment name=<|plugin|>\n' + message['content'] + '<|im_end|>\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] }}"
    "{% for call in message.tool_calls or [] %}"
    "{% set call = call.function if call.function is defined else call %}"
    "{{ '<|action_start|><|plugin|>\n{\"name\": ' + (call.name | tojson) + ', \"parameters\": '"
    " + (call.arguments | tojson) + '}<|action_end|>' }}"
    "{% endfor %}{{ '<|im_end|>\n' }}{% endif %}"
    "{% if loop.first and tools and message['role'] == 'system' %}{{ plugins }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
INTERNLM2_TEMPLATE = TemplateSpec(
    name="internlm2",
    jinja=INTERNLM2_JINJA,
    special_tokens=SPECIAL_TOKENS,
    assistant_suffix="<|im_end|>",
    stop_words=("{eos_token}",),
    tool_calls="sft_plugin_internlm.tool_calls:internlm2",
    description="InternLM2/2.5: the official chat_template (ChatML after <s>), no default system",
)
# The same format as the official `chat()` prompts it: InternLM's meta instruction as the
# system turn when none is given (its `meta_instruction` default). `--template internlm2-chat`.
INTERNLM2_CHAT_TEMPLATE = dataclasses.replace(
    INTERNLM2_TEMPLATE, name="internlm2-chat", default_system=INTERNLM_SYSTEM,
    description="InternLM2/2.5 as model.chat() prompts: ChatML after <s>, InternLM's meta "
                "instruction as the default system")

TEMPLATES = (INTERNLM_TEMPLATE, INTERNLM2_TEMPLATE, INTERNLM2_CHAT_TEMPLATE)

# model_type: (template, ModelScope id, Hugging Face id, description)
# Ids from ms-swift swift/llm/model/model/internlm.py (ModelScope first, Hugging Face second).
MODELS = {
    "internlm-chat-7b": (
        "internlm", "Shanghai_AI_Laboratory/internlm-chat-7b", "internlm/internlm-chat-7b",
        "InternLM-Chat-7B (v1)"),
    "internlm2-chat-7b": (
        "internlm2", "Shanghai_AI_Laboratory/internlm2-chat-7b", "internlm/internlm2-chat-7b",
        "InternLM2-Chat-7B"),
    "internlm2-chat-20b": (
        "internlm2", "Shanghai_AI_Laboratory/internlm2-chat-20b", "internlm/internlm2-chat-20b",
        "InternLM2-Chat-20B"),
    "internlm2.5-7b-chat": (
        "internlm2", "Shanghai_AI_Laboratory/internlm2_5-7b-chat", "internlm/internlm2_5-7b-chat",
        "InternLM2.5-7B-Chat"),
}

# Both convert to Llama (native.py), so LoRA targets Llama's q/k/v projections (InternLM2's
# fused wqkv is split into them). The conversion reads tokenizer.model with sentencepiece.
# Last, the config.json model_type of each: the remote code's "internlm" / "internlm2"; v1
# in the Llama layout ("llama", e.g. a copy converted by others) loads as it is, with the
# same targets and template.
ARCHITECTURES = {
    "internlm": (("q_proj", "k_proj", "v_proj"), ("sentencepiece",), ("internlm", "llama")),
    "internlm2": (("q_proj", "k_proj", "v_proj"), ("sentencepiece",), ("internlm2",)),
}


def model_specs() -> list[ModelSpec]:
    specs = []
    for model_type, (template, modelscope_id, huggingface_id, description) in MODELS.items():
        lora_targets, requires, config_model_types = ARCHITECTURES[template]
        specs.append(ModelSpec(
            model_type=model_type,
            family=FAMILY,
            template=template,
            hub_ids={"modelscope": modelscope_id, "huggingface": huggingface_id},
            lora_target_modules=lora_targets,
            config_model_types=config_model_types,
            requires=requires,
            loader="sft_plugin_internlm.native:load",
            tokenizer_loader="sft_plugin_internlm.native:load_tokenizer",
            converted_to="llama",
            # v1's parameter names are Llama's: its adapters also load onto the official code
            keeps_official_names=template == "internlm",
            description=description,
        ))
    return specs


# InternLM3-8B-Instruct needs no conversion: transformers knows its config.json (model_type
# "internlm3": InternLM3Config reads its `qkv_bias` / `bias` and dynamic rope scaling) and
# builds LlamaForCausalLM for it, whose parameter names are the official remote code's
# (modeling_internlm3.py: embed_tokens, self_attn.q_proj/k_proj/v_proj/o_proj,
# mlp.gate_proj/up_proj/down_proj, lm_head), so its weights load as they are and its adapters
# also fit the official code. transformers builds the fast tokenizer from tokenizer.model
# (sentencepiece). The chat format is InternLM2's: ms-swift registers internlm3 with
# TemplateType.internlm2 (swift/llm/model/model/internlm.py, LLMModelType.internlm3; ids from
# the same entry), and the chat_template of internlm3-8b-instruct's tokenizer_config.json is
# byte for byte internlm2-chat-7b's (as xorbitsai/inference's llm_family.json holds it, entry
# "internlm3-instruct", commit 7ecec16b; tests/test_internlm3.py pins its sha256).
INTERNLM3_SPEC = ModelSpec(
    model_type="internlm3-8b-instruct",
    family=FAMILY,
    template="internlm2",
    hub_ids={"modelscope": "Shanghai_AI_Laboratory/internlm3-8b-instruct",
             "huggingface": "internlm/internlm3-8b-instruct"},
    lora_target_modules=("q_proj", "k_proj", "v_proj"),
    config_model_types=("internlm3",),
    requires=("sentencepiece",),
    description="InternLM3-8B-Instruct (transformers' internlm3 config, Llama modules)",
)


@hookimpl
def register_models(register):
    for spec in (*model_specs(), INTERNLM3_SPEC):
        register(spec)


@hookimpl
def register_templates(register):
    for template in TEMPLATES:
        register(template)
