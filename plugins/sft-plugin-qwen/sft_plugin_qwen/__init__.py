"""Qwen chat models: Qwen (v1), Qwen1.5, Qwen2 and Qwen2.5, all as Qwen2ForCausalLM (Qwen v1
and its GPTQ Int4/Int8 checkpoints converted on load, native.py: no remote code runs); Qwen3
dense (Qwen3ForCausalLM) and MoE (Qwen3MoeForCausalLM), with the 2507 Instruct and Thinking
releases.

Hub ids come from ms-swift (swift/llm/model/model/qwen.py: ``Model('<modelscope id>',
'<hugging face id>')``); none of these models has a revision other than ``main`` there.
Registering is cheap: nothing here imports torch or transformers.
"""

from __future__ import annotations

from importlib.resources import files

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec
from sdk.templates.tool_calls import hermes

# --- Templates ----------------------------------------------------------------------------------

# Official chat_template of Qwen2-Instruct (tokenizer_config.json of Qwen/Qwen2-7B-Instruct and
# Qwen/Qwen2-72B-Instruct): ChatML, default system "You are a helpful assistant." (with a period).
# It is also exactly Qwen v1's format: qwen_generation_utils.make_context in Qwen/Qwen-7B-Chat
# builds
#   "<|im_start|>system\n{system}<|im_end|>" + "\n<|im_start|>user\n{q}<|im_end|>"
#   + "\n<|im_start|>assistant\n{r}<|im_end|>" ... + "\n<|im_start|>assistant\n"
# with system="You are a helpful assistant." (modeling_qwen.QWenLMHeadModel.chat), and Qwen's
# finetune.py ends every turn with "<|im_end|>\n".
QWEN_JINJA = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Official chat_template of Qwen1.5-Chat (tokenizer_config.json of Qwen/Qwen1.5-0.5B-Chat at
# commit f82bd369): the same ChatML, but the default system has no final period; the qwen2
# tokenizer files in shared/data carry exactly this template.
QWEN1_5_JINJA = QWEN_JINJA.replace("You are a helpful assistant.<", "You are a helpful assistant<")

# Official chat_template of Qwen2.5-Instruct (tokenizer_config.json of Qwen/Qwen2.5-7B-Instruct,
# the same for all sizes), verbatim: tool-call blocks and the default system prompt
# "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.".
QWEN2_5_JINJA = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""  # noqa: E501  (official text, kept verbatim)

# Qwen3's official chat templates, kept byte for byte in this package (NAME.jinja). The Hugging
# Face model repos keep tokenizer_config.json as a plain git blob, so the blob id below names
# the exact file (git hash-object of it); the copies read are public mirrors of those repos.
# - qwen3.jinja: Qwen/Qwen3-1.7B tokenizer_config.json (blob
#   417d038a63fa3de29cfde265caedae14d1a58d92, mirrored in nam2350/consultai models/Qwen3-1.7B
#   at 91f6881f), the hybrid-thinking template
#   of every Qwen3 dense and MoE model (the same text as Qwen/Qwen3-8B at commit
#   895c8d171bc03c30e113cd7a28c02494b5e068b7): `enable_thinking` false writes an empty
#   <think></think> into the generation prompt; earlier turns' reasoning is dropped (only the
#   replies after the last user query keep theirs); a reply's reasoning comes from its
#   `reasoning_content` or from a <think>...</think> at the start of its content. /think and
#   /no_think are plain user text to the template (the model was trained to obey them).
# - qwen3-instruct-2507.jinja: Qwen/Qwen3-4B-Instruct-2507 tokenizer_config.json (blob
#   9a14ebd4cf742ee5f21f0fcc2e57ba987622e7f1, nam2350/consultai models/Qwen3-4B at 91f6881f):
#   the same text without the enable_thinking switch. It still writes an empty <think></think>
#   before the last reply (unslothai/unsloth pull request 3110 reports the same), which the model
#   never writes after its generation prompt: not a `reasoning` template, so that block stays
#   context and the answer alone is trained.
# - qwen3-thinking-2507.jinja: the chat_template of the Qwen3 Thinking-2507 releases (4B,
#   30B-A3B, 235B-A22B), as xorbitsai/inference keeps it for them (xinference/model/llm/
#   llm_family.json, entry "Qwen3-Thinking", commit 7ecec16b63383e18e4af790c4b522fb7d79f7e77;
#   added in f17ae7af, "Support Qwen3-Thinking"), the same bytes as Qwen/Qwen3-4B-Thinking-2507
#   tokenizer_config.json quoted in akougkas/warpio-cli warpio-docs/ai-docs/model_cards/
#   qwen3:4b.md (commit 8dde6d21): Instruct-2507's text, the generation prompt opening <think>.
def official_jinja(name: str) -> str:
    return (files(__name__) / f"{name}.jinja").read_text(encoding="utf-8")


# Qwen has no BOS; the chat models end a turn with <|im_end|> and a document with <|endoftext|>.
SPECIAL_TOKENS = {"eos_token": "<|im_end|>"}
STOP_WORDS = ("<|endoftext|>", "<|im_start|>")


def qwen_template(name: str, jinja: str, description: str,
                  reasoning: bool = False) -> TemplateSpec:
    """Qwen's ChatML templates differ only in their text (default system prompt, tools,
    <think> blocks); those with tools write calls in Hermes' format."""
    return TemplateSpec(name=name, jinja=jinja, assistant_suffix="<|im_end|>",
                        special_tokens=SPECIAL_TOKENS, stop_words=STOP_WORDS,
                        description=description, reasoning=reasoning,
                        tool_calls=hermes if "<tool_call>" in jinja else None)


QWEN_TEMPLATE = qwen_template(
    "qwen", QWEN_JINJA, "ChatML, default system 'You are a helpful assistant.' (Qwen, Qwen2)")
QWEN1_5_TEMPLATE = qwen_template(
    "qwen1.5", QWEN1_5_JINJA, "ChatML, default system 'You are a helpful assistant' (Qwen1.5)")
QWEN2_5_TEMPLATE = qwen_template(
    "qwen2.5", QWEN2_5_JINJA,
    "Qwen2.5-Instruct ChatML with tool calls, default system 'You are Qwen, ...'")
QWEN3_TEMPLATE = qwen_template(
    "qwen3", official_jinja("qwen3"),
    "Qwen3 hybrid thinking: <think> blocks, --enable-thinking, earlier reasoning dropped",
    reasoning=True)
QWEN3_INSTRUCT_2507_TEMPLATE = qwen_template(
    "qwen3-instruct-2507", official_jinja("qwen3-instruct-2507"),
    "Qwen3-Instruct-2507 (non-thinking): Qwen3's template without enable_thinking")
QWEN3_THINKING_2507_TEMPLATE = qwen_template(
    "qwen3-thinking-2507", official_jinja("qwen3-thinking-2507"),
    "Qwen3-Thinking-2507: Qwen3's template, the generation prompt opens <think>", reasoning=True)
TEMPLATES = (QWEN_TEMPLATE, QWEN1_5_TEMPLATE, QWEN2_5_TEMPLATE, QWEN3_TEMPLATE,
             QWEN3_INSTRUCT_2507_TEMPLATE, QWEN3_THINKING_2507_TEMPLATE)

# --- Models -------------------------------------------------------------------------------------

ATTENTION = ("q_proj", "k_proj", "v_proj")
# Qwen v1 converted to Qwen2 on load (native.py): no remote code runs; tiktoken reads
# qwen.tiktoken for the fast tokenizer.
CONVERTED = {"loader": "sft_plugin_qwen.native:load",
             "tokenizer_loader": "sft_plugin_qwen.native:load_tokenizer", "converted_to": "qwen2"}
# Its GPTQ checkpoints likewise, loaded through transformers' GPTQ integration. optimum and
# gptqmodel are not in `requires`: without them --quantization-bit still works (the weights
# dequantized and re-quantized with bitsandbytes), so the loader checks them itself, before
# any weight is read (native.gptq_conversion).
CONVERTED_GPTQ = {"loader": "sft_plugin_qwen.native:load_gptq",
                  "tokenizer_loader": "sft_plugin_qwen.native:load_gptq_tokenizer",
                  "converted_to": "qwen2", "quantized": "GPTQ"}
CONVERSION_REQUIRES = ("tiktoken",)

# model_type -> repo id (the same on Hugging Face and ModelScope, per ms-swift's qwen.py).
QWEN_V1 = {
    "qwen-7b-chat": "Qwen/Qwen-7B-Chat",
    "qwen-7b-chat-int4": "Qwen/Qwen-7B-Chat-Int4",
    "qwen-7b-chat-int8": "Qwen/Qwen-7B-Chat-Int8",
    "qwen-14b-chat": "Qwen/Qwen-14B-Chat",
    "qwen-14b-chat-int4": "Qwen/Qwen-14B-Chat-Int4",
    "qwen-14b-chat-int8": "Qwen/Qwen-14B-Chat-Int8",
    "qwen-72b-chat": "Qwen/Qwen-72B-Chat",
    "qwen-72b-chat-int4": "Qwen/Qwen-72B-Chat-Int4",
    "qwen-72b-chat-int8": "Qwen/Qwen-72B-Chat-Int8",
}
QWEN_V1_CHAT = {name: repo for name, repo in QWEN_V1.items()
                if not name.endswith(("-int4", "-int8"))}
QWEN_V1_GPTQ = {name: repo for name, repo in QWEN_V1.items() if name not in QWEN_V1_CHAT}
QWEN1_5 = {f"qwen1.5-{size.lower()}-chat": f"Qwen/Qwen1.5-{size}-Chat"
           for size in ("0.5B", "1.8B", "4B", "7B", "14B", "32B", "72B", "110B")}
QWEN2 = {f"qwen2-{size.lower()}-instruct": f"Qwen/Qwen2-{size}-Instruct"
         for size in ("0.5B", "1.5B", "7B", "72B")}
QWEN2_5 = {f"qwen2.5-{size.lower()}-instruct": f"Qwen/Qwen2.5-{size}-Instruct"
           for size in ("0.5B", "1.5B", "3B", "7B", "14B", "32B", "72B")}
# Qwen3 (ms-swift's qwen.py, Model('Qwen/Qwen3-8B', 'Qwen/Qwen3-8B') and so on: the same id
# on both hubs). The base checkpoints carry the same chat template as the hybrid ones.
QWEN3_DENSE_SIZES = ("0.6B", "1.7B", "4B", "8B", "14B", "32B")
QWEN3 = {f"qwen3-{size.lower()}": f"Qwen/Qwen3-{size}" for size in QWEN3_DENSE_SIZES}
QWEN3_BASE = {f"qwen3-{size.lower()}-base": f"Qwen/Qwen3-{size}-Base"
              for size in QWEN3_DENSE_SIZES if size != "32B"}  # no 32B base was released
QWEN3_MOE = {"qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B", "qwen3-235b-a22b": "Qwen/Qwen3-235B-A22B",
             "qwen3-30b-a3b-base": "Qwen/Qwen3-30B-A3B-Base"}
QWEN3_2507 = {"qwen3-4b-{}-2507": "Qwen/Qwen3-4B-{}-2507"}
QWEN3_MOE_2507 = {"qwen3-30b-a3b-{}-2507": "Qwen/Qwen3-30B-A3B-{}-2507",
                  "qwen3-235b-a22b-{}-2507": "Qwen/Qwen3-235B-A22B-{}-2507"}


def releases_2507(models: dict[str, str], kind: str) -> dict[str, str]:
    return {name.format(kind.lower()): repo.format(kind) for name, repo in models.items()}


# Every linear layer of a Qwen3 block (attention and the dense MLP). In the MoE, transformers
# keeps each layer's experts as fused 3-D weights (Qwen3MoeExperts.gate_up_proj/down_proj),
# not nn.Linear: LoRA on attention by default; `--lora-target-modules ... experts.gate_up_proj
# experts.down_proj` adds the experts (through peft's target_parameters).
QWEN3_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
QWEN3_MOE_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")

# (models, template, lora targets, config.json model_type, remote code, description of the
# generation). Qwen v1's remote code names its config "qwen" (the folder a user gives is the
# official one, converted on load); Qwen1.5 onwards are transformers' "qwen2".
FAMILIES = (
    (QWEN_V1_CHAT, "qwen", ATTENTION, "qwen", False,
     "Qwen (v1) chat, converted on load to Qwen2ForCausalLM"),
    # peft's all-linear finds no GPTQ layer (they are not nn.Linear): list Qwen2's linears
    (QWEN_V1_GPTQ, "qwen", ATTENTION, "qwen", False,
     "Qwen (v1) chat, converted on load to Qwen2ForCausalLM, GPTQ through "
     "transformers/optimum/gptqmodel"),
    (QWEN1_5, "qwen1.5", ATTENTION, "qwen2", False, "Qwen1.5 chat, Qwen2ForCausalLM"),
    (QWEN2, "qwen", ATTENTION, "qwen2", False, "Qwen2 instruct, Qwen2ForCausalLM"),
    (QWEN2_5, "qwen2.5", ATTENTION, "qwen2", False, "Qwen2.5 instruct, Qwen2ForCausalLM"),
    (QWEN3, "qwen3", QWEN3_TARGETS, "qwen3", False, "Qwen3 hybrid thinking, Qwen3ForCausalLM"),
    (QWEN3_BASE, "qwen3", QWEN3_TARGETS, "qwen3", False, "Qwen3 base, Qwen3ForCausalLM"),
    (QWEN3_MOE, "qwen3", QWEN3_MOE_TARGETS, "qwen3_moe", False,
     "Qwen3 MoE hybrid thinking, Qwen3MoeForCausalLM"),
    (releases_2507(QWEN3_2507, "Instruct"), "qwen3-instruct-2507", QWEN3_TARGETS, "qwen3", False,
     "Qwen3 2507 instruct (no thinking), Qwen3ForCausalLM"),
    (releases_2507(QWEN3_MOE_2507, "Instruct"), "qwen3-instruct-2507", QWEN3_MOE_TARGETS,
     "qwen3_moe", False, "Qwen3 MoE 2507 instruct (no thinking), Qwen3MoeForCausalLM"),
    (releases_2507(QWEN3_2507, "Thinking"), "qwen3-thinking-2507", QWEN3_TARGETS, "qwen3", False,
     "Qwen3 2507 thinking, Qwen3ForCausalLM"),
    (releases_2507(QWEN3_MOE_2507, "Thinking"), "qwen3-thinking-2507", QWEN3_MOE_TARGETS,
     "qwen3_moe", False, "Qwen3 MoE 2507 thinking, Qwen3MoeForCausalLM"),
)


def model_specs() -> list[ModelSpec]:
    specs = []
    for models, template, targets, config_model_type, remote_code, description in FAMILIES:
        for model_type, repo_id in models.items():
            quantized = models is QWEN_V1_GPTQ
            converted = models is QWEN_V1_CHAT
            requires = CONVERSION_REQUIRES if converted or quantized else ()
            suffix = f" ({model_type[-4:]})" if quantized else ""
            specs.append(ModelSpec(
                model_type=model_type,
                family="qwen",
                template=template,
                hub_ids={"huggingface": repo_id, "modelscope": repo_id},
                lora_target_modules=targets,
                config_model_types=(config_model_type,),
                requires=requires,
                requires_remote_code=remote_code,
                description=f"{repo_id.split('/')[1]}: {description}{suffix}",
                **(CONVERTED if converted else CONVERTED_GPTQ if quantized else {}),
            ))
    return specs


@hookimpl
def register_models(register):
    for spec in model_specs():
        register(spec)


@hookimpl
def register_templates(register):
    for template in TEMPLATES:
        register(template)
