"""Mistral-7B-Instruct v0.1 / v0.2 / v0.3, Mistral-Nemo-Instruct-2407,
Mistral-Small-24B-Instruct-2501 and Mixtral-8x7B-Instruct-v0.1.

All are native to transformers (MistralForCausalLM, MixtralForCausalLM), so they load
with the generic loader; no remote code. Each template is the model's official Hugging Face
chat template, so `sdk template render` equals ``tokenizer.apply_chat_template``.
"""

from __future__ import annotations

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec
from sdk.templates.tool_calls import mistral

FAMILY = "mistral"
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>"}
EOS = "</s>"

# --- templates -------------------------------------------------------------------------------

# Mistral-7B-Instruct-v0.1: the official template shipped with the v0.1 tokenizer
# (/work/shared/data/tokenizers/mistral-v0.1/chat_template.jinja, byte for byte). No system
# role: a system message raises "Only user and assistant roles are supported!".
MISTRAL_V01_JINJA = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
    "assistant roles are supported!') }}{% endif %}{% endfor %}"
)

# Mistral-7B-Instruct-v0.2 (Mistral tokenizer "V1"; Mixtral-8x7B-Instruct-v0.1 uses the same
# tokenizer and format): the chat_template of mistralai/Mistral-7B-Instruct-v0.2's
# tokenizer_config.json since it was aligned with mistral-common. Text as recorded in
# llama.cpp tests/test-chat-template.cpp ("mistralai/Mistral-7B-Instruct-v0.2 (mistralai 'v1'
# template with a system prompt)"). The system prompt goes into the FIRST user turn.
MISTRAL_V02_JINJA = r"""{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\n\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""  # noqa: E501

# Mistral-7B-Instruct-v0.3 (Mistral tokenizer "V3": [INST] / [/INST] are control tokens): the
# chat_template of mistralai/Mistral-7B-Instruct-v0.3's tokenizer_config.json (the copy in
# /work/shared/data/tokenizers/mistral-v0.3 has none). Text as recorded, identically, in
# llama.cpp tests/test-chat-template.cpp (mistralai 'v3' template) and in
# text-generation-inference's router tests. The system prompt goes into the LAST message when
# it is a user turn (`loop.last`), so a conversation that ends with a reply renders without it.
MISTRAL_V03_JINJA = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""  # noqa: E501

# Mistral-Nemo-Instruct-2407 (Tekken tokenizer, "V3-Tekken": [INST] / [/INST] control tokens):
# the chat_template of mistralai/Mistral-Nemo-Instruct-2407's tokenizer_config.json, as llama.cpp
# keeps it (ggerganov/llama.cpp models/templates/mistralai-Mistral-Nemo-Instruct-2407.jinja,
# commit 7b5e0803; sha256 pinned in the tests). v0.3's format without its spaces: no space after
# [INST] nor before a reply, and the reply is not trimmed; the system prompt likewise goes into the
# LAST message when it is a user turn.
MISTRAL_NEMO_JINJA = r"""{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS][" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST]" + system_message + "\n\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST]" + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}
        {{- "[TOOL_CALLS][" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- message["content"] + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS]{"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""  # noqa: E501

# Mistral-Small-24B-Instruct-2501 (Mistral Small 3, Tekken "V7": [SYSTEM_PROMPT] control tokens):
# the chat_template of mistralai/Mistral-Small-24B-Instruct-2501's tokenizer_config.json, as
# quoted in floneum/floneum models/kalosm-llama/src/chat_template.rs
# (test_mistral_small_chat_template, whose expected output the tests quote; sha256 pinned), the
# model card's "Basic Instruct Template (V7-Tekken)":
# <s>[SYSTEM_PROMPT]<system prompt>[/SYSTEM_PROMPT][INST]<user message>[/INST]<reply></s>.
# Without a system message it writes Mistral's default one, dated today (strftime_now).
MISTRAL_SMALL_2501_JINJA = r"""{%- set today = strftime_now("%Y-%m-%d") %}
{%- set default_system_message = "You are Mistral Small 3, a Large Language Model (LLM) created by Mistral AI, a French startup headquartered in Paris.\nYour knowledge base was last updated on 2023-10-01. The current date is " + today + ".\n\nWhen you're not sure about some information, you say that you don't have the information and don't make up anything.\nIf the user's question is not clear, ambiguous, or does not provide enough context for you to accurately answer the question, you do not try to answer it right away and you rather ask the user to clarify their request (e.g. \"What are some good restaurants around me?\" => \"Where are you?\" or \"When is the next flight to Tokyo\" => \"Where do you travel from?\")" %}

{{- bos_token }}

{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set system_message = default_system_message %}
    {%- set loop_messages = messages %}
{%- endif %}
{{- '[SYSTEM_PROMPT]' + system_message + '[/SYSTEM_PROMPT]' }}

{%- for message in loop_messages %}
    {%- if message['role'] == 'user' %}
        {{- '[INST]' + message['content'] + '[/INST]' }}
    {%- elif message['role'] == 'system' %}
        {{- '[SYSTEM_PROMPT]' + message['content'] + '[/SYSTEM_PROMPT]' }}
    {%- elif message['role'] == 'assistant' %}
        {{- message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Only user, system and assistant roles are supported!') }}
    {%- endif %}
{%- endfor %}"""  # noqa: E501

TEMPLATES = (
    TemplateSpec(name="mistral-v0.1", jinja=MISTRAL_V01_JINJA, assistant_suffix=EOS,
                 special_tokens=SPECIAL_TOKENS, stop_words=(EOS,),
                 description="Mistral-7B-Instruct-v0.1: <s>[INST] q [/INST]a</s> ; no system"),
    TemplateSpec(name="mistral-v0.2", jinja=MISTRAL_V02_JINJA, assistant_suffix=EOS,
                 special_tokens=SPECIAL_TOKENS, stop_words=(EOS,),
                 description="Mistral-7B-Instruct-v0.2 / Mixtral-8x7B-Instruct: "
                             "<s> [INST] q [/INST] a</s> ; system in the first user turn"),
    TemplateSpec(name="mistral-v0.3", jinja=MISTRAL_V03_JINJA, assistant_suffix=EOS,
                 special_tokens=SPECIAL_TOKENS, stop_words=(EOS,), tool_calls=mistral,
                 description="Mistral-7B-Instruct-v0.3: <s>[INST] q[/INST] a</s> ; system in "
                             "the last user turn"),
    TemplateSpec(name="mistral-nemo", jinja=MISTRAL_NEMO_JINJA, assistant_suffix=EOS,
                 special_tokens=SPECIAL_TOKENS, stop_words=(EOS,), tool_calls=mistral,
                 description="Mistral-Nemo-Instruct-2407 (Tekken): <s>[INST]q[/INST]a</s> ; system "
                             "in the last user turn"),
    TemplateSpec(name="mistral-small-2501", jinja=MISTRAL_SMALL_2501_JINJA, assistant_suffix=EOS,
                 special_tokens=SPECIAL_TOKENS, stop_words=(EOS,),
                 description="Mistral-Small-24B-Instruct-2501 (V7-Tekken): <s>[SYSTEM_PROMPT]s"
                             "[/SYSTEM_PROMPT][INST]q[/INST]a</s> ; default system dated today"),
)

# --- models ----------------------------------------------------------------------------------

# model_type: (ModelScope id, Hugging Face id, template, config.json model_type, description).
# Ids from ms-swift swift/llm/model/model/mistral.py: Model('<modelscope id>', '<hf id>').
MODELS = {
    "mistral-7b-instruct-v0.1": ("AI-ModelScope/Mistral-7B-Instruct-v0.1",
                                 "mistralai/Mistral-7B-Instruct-v0.1", "mistral-v0.1", "mistral",
                                 "Mistral 7B Instruct v0.1 (Apache-2.0)"),
    "mistral-7b-instruct-v0.2": ("AI-ModelScope/Mistral-7B-Instruct-v0.2",
                                 "mistralai/Mistral-7B-Instruct-v0.2", "mistral-v0.2", "mistral",
                                 "Mistral 7B Instruct v0.2, 32k context (Apache-2.0)"),
    "mistral-7b-instruct-v0.3": ("LLM-Research/Mistral-7B-Instruct-v0.3",
                                 "mistralai/Mistral-7B-Instruct-v0.3", "mistral-v0.3", "mistral",
                                 "Mistral 7B Instruct v0.3, 32768-token vocab (Apache-2.0)"),
    "mistral-nemo-instruct-2407": ("AI-ModelScope/Mistral-Nemo-Instruct-2407",
                                   "mistralai/Mistral-Nemo-Instruct-2407", "mistral-nemo",
                                   "mistral", "Mistral Nemo 12B Instruct 2407, Tekken 131k vocab, "
                                   "128k context (Apache-2.0)"),
    "mistral-small-24b-instruct-2501": ("mistralai/Mistral-Small-24B-Instruct-2501",
                                        "mistralai/Mistral-Small-24B-Instruct-2501",
                                        "mistral-small-2501", "mistral",
                                        "Mistral Small 3 24B Instruct 2501, Tekken 131k vocab, "
                                        "32k context (Apache-2.0)"),
    "mixtral-8x7b-instruct-v0.1": ("AI-ModelScope/Mixtral-8x7B-Instruct-v0.1",
                                   "mistralai/Mixtral-8x7B-Instruct-v0.1", "mistral-v0.2",
                                   "mixtral",
                                   "Mixtral 8x7B Instruct v0.1, sparse MoE (Apache-2.0)"),
}

# The attention projections of MistralAttention / MixtralAttention.
LORA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj")
# The hub repos also hold the raw Mistral checkpoint (consolidated.*) and, for the older
# ones, PyTorch .bin copies of the safetensors weights; transformers needs neither.
IGNORE_PATTERNS = ("consolidated.*", "*.bin", "*.pth", "*.pt")


def model_specs() -> list[ModelSpec]:
    return [
        ModelSpec(
            model_type=model_type,
            family=FAMILY,
            template=template,
            hub_ids={"huggingface": hf_id, "modelscope": ms_id},
            lora_target_modules=LORA_TARGET_MODULES,
            config_model_types=(config_model_type,),
            ignore_patterns=IGNORE_PATTERNS,
            description=description,
        )
        for model_type, (ms_id, hf_id, template, config_model_type, description)
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
