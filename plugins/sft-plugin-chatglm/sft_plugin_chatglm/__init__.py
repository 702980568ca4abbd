"""ChatGLM2, ChatGLM3, GLM-4 and GLM-4-0414 (Zhipu AI / THUDM) chat models and their chat
formats.

Registering is cheap: nothing here imports torch or transformers.
"""

from __future__ import annotations

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec

# ---------------------------------------------------------------------------------------------
# Templates: each reproduces the official prompt text, cited below. The tests compare the
# renderings with literal strings in that format, and (tests/test_chatglm_native.py) the
# ChatGLM2/3 ids with those the official tokenizer's chat-format code builds.
# ---------------------------------------------------------------------------------------------

# ChatGLM2-6B: THUDM/chatglm2-6b tokenization_chatglm.py
#   get_prefix_tokens()  -> [gMASK] sop   (added in front by build_inputs_with_special_tokens)
#   build_prompt(query, history):
#       "[Round {i+1}]\n\n问：{old_query}\n\n答：{response}\n\n" for each past round, then
#       "[Round {n+1}]\n\n问：{query}\n\n答："             (rounds numbered from 1)
# The last reply is what the official fine-tuning (ChatGLM2-6B ptuning/main.py) trains:
#   tokenizer.encode(prompt) + tokenizer.encode(answer, add_special_tokens=False) + [eos_token_id]
# The answer is encoded on its own, so it starts with SentencePiece's word-start mark: the " "
# written before it (the rendered text then encodes to exactly those ids), and it ends with the
# eos "</s>". Past replies are the prompt's text, as build_prompt writes them: no mark, "\n\n"
# and no eos (ms-swift's chatglm2 template: chat_sep "\n\n", suffix eos).
# ChatGLM2 has no system role; like ms-swift (prefix ['{{SYSTEM}}']) a system text, if given,
# goes in front of the first round. The [gMASK] sop prefix is ids, not text: the tokenizer adds
# them when asked for its special tokens (add_special_tokens=True below), as in ChatGLM2's own
# tokenizer(prompt) call; the text "[gMASK]sop" would not encode to those ids.
CHATGLM2_JINJA = (
    "{% set ns = namespace(round=0) %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}{% set ns.round = ns.round + 1 %}"
    "{{ '[Round ' ~ ns.round ~ ']\n\n问：' ~ message['content'] ~ '\n\n' }}"
    "{% elif loop.last %}{{ '答： ' ~ message['content'] ~ eos_token }}"
    "{% else %}{{ '答：' ~ message['content'] ~ '\n\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '答：' }}{% endif %}"
)

# The end-of-turn marker of ChatGLM3 and GLM-4: a reply ends where the next role token comes;
# generation stops on "<|user|>" or "<|observation|>" (their generation_config eos_token_id
# lists those ids with the eos). The official chat templates write nothing after the last
# reply, so the templates below add "<|user|>" after a conversation's final reply, as ms-swift
# trains it (swift/template/templates/glm.py, ChatGLM4TemplateMeta: suffix ['<|user|>'],
# stop_words ['<|endoftext|>', '<|user|>', '<|observation|>']; ms-swift uses that template for
# chatglm3 and glm-4-9b-chat). Every reply, the last included, is then trained with the
# "<|user|>" that ends it. Prompts (add_generation_prompt) are exactly the official text.
END_OF_TURN = "<|user|>"

# ChatGLM3-6B: the chat_template of THUDM/chatglm3-6b tokenizer_config.json (revision
# 103caa40027ebfd8450289ca2f278eac4ff26405), which mirrors tokenization_chatglm.py
# build_chat_input / build_single_message: [gMASK] sop, then per message
# <|role|> + "\n" + the message (the " " stands for SentencePiece's word-start mark that
# encoding the message on its own adds), then <|assistant|> to prompt a reply.
# Added here: the end-of-turn marker after a final reply (see END_OF_TURN), and tools, which
# that chat_template does not write, as ChatGLM3's own fine-tuning writes them
# (THUDM/ChatGLM3 finetune_chatmodel_demo/preprocess_utils.py, format_conversation, commit
# 174470a39343647e2780f8fd9d0edbf4786cdb23; the model's chat() reads the same back in
# modeling_chatglm.py process_response):
#   - the schemas: a first system message TOOL_DEFINITION_PREFIX "Answer the following
#     questions as best as you can. You have access to the following tools:\n" +
#     json.dumps(tools, indent=4, ensure_ascii=False), tools as plain function schemas
#     (OpenAI's {"type": "function", "function": schema} unwrapped);
#   - a call: build_single_message("assistant", name, "```python\n" +
#     format_function_call("tool_call", arguments) + "\n```"), i.e. <|assistant|>name\n then
#     tool_call(key=value, ...) with each value as Python writes a constant (astunparse:
#     repr(value); ([v] | string)[1:-1] is that repr in jinja), one such message per call;
#   - a result: build_single_message("observation", "", result).
# A call is trained with the <|observation|> that follows it (the official labels are shifted
# by one: each trained message's next token is trained), so a final call ends with it.
CHATGLM3_TOOL_PROMPT = ("Answer the following questions as best as you can. You have access to "
                        "the following tools:\n")
CHATGLM3_JINJA = (
    "[gMASK]sop"
    "{% if tools %}{% set ns = namespace(schemas=[]) %}{% for tool in tools %}"
    "{% set ns.schemas = ns.schemas + [tool.function if tool.function is defined else tool] %}"
    "{% endfor %}<|system|>\n " + CHATGLM3_TOOL_PROMPT + "{{ ns.schemas | tojson(indent=4) }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'tool' %}<|observation|>\n {{ message['content'] }}"
    "{% elif message.tool_calls %}"
    "{% if message['content'] %}<|assistant|>\n {{ message['content'] }}{% endif %}"
    "{% for call in message.tool_calls %}"
    "{% set call = call.function if call.function is defined else call %}"
    "<|assistant|>{{ call.name }}\n ```python\ntool_call("
    "{% for key, value in call.arguments.items() %}{{ key }}={{ ([value] | string)[1:-1] }}"
    "{% if not loop.last %}, {% endif %}{% endfor %})\n```"
    "{% endfor %}"
    "{% else %}<|{{ message['role'] }}|>\n {{ message['content'] }}{% endif %}"
    "{% endfor %}"
    "{% if messages[-1].tool_calls %}<|observation|>"
    "{% elif messages[-1]['role'] == 'assistant' %}" + END_OF_TURN + "{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# GLM-4-9B-Chat: the chat_template of THUDM/glm-4-9b-chat tokenizer_config.json, as quoted in
# full by ShishirPatil/gorilla berkeley-function-call-leaderboard/bfcl_eval/model_handler/
# local_inference/glm.py (commit 8baf21262876a16558adcf8880eaad145a0b85d3; the tests render that
# text, plugins/sft-plugin-chatglm/tests/official_glm4.py):
#   [gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>\n
#   GLM4_TOOL_PROMPT{% set tools = item['tools'] %}{% for tool in tools %}{% if tool['type'] ==
#   'function' %}\n\n## {{ tool['function']['name'] }}\n\n{{ tool['function'] |
#   tojson(indent=4) }}\n在调用上述函数时，请使用 Json 格式表示调用的参数。{% elif ... (python,
#   simple_browser, cogview: Zhipu's built-in tools) %}{% endif %}{% endfor %}{% endif %}
#   {% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n{{ item['content'] }}
#   {% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}
# Verbatim here: the prefix, the tool prompt, each function schema's text (written after a block
# tag, so that trim_blocks drops the same first "\n" of "\n\n## " as it does in the official
# template under transformers), and the message loop; a message with empty content is left out.
# The official template reads tools from a message (`item['tools']`); sdk passes them as the
# `tools` variable, so they are written first, as a first system message carrying them and no
# content renders (the shape GLM-4's basic_demo/openai_api_server.py builds; that file was not
# re-read for this). Only function tools are written (the built-in ones have no schema in sdk
# data); a plain schema counts as one. A call is rendered as the official template renders an
# assistant message {"metadata": name, "content": arguments}, a result as an "observation"
# message, one message per call (LLaMA-Factory's glm4 template and ms-swift's glm4 agent
# template write the same: "<|assistant|>" name "\n" arguments, "<|observation|>\n" result);
# arguments given as an object are written as LLaMA-Factory's GLM4ToolUtils writes them
# (json.dumps(arguments, ensure_ascii=False), i.e. tojson). Added here: the
# end-of-turn marker after a final reply (see END_OF_TURN) and, after a final call,
# <|observation|>, where generation of a call stops; a call is trained with it, as ChatGLM3's.
GLM4_TOOL_PROMPT = ("你是一个名为 ChatGLM 的人工智能助手。"
                    "你是基于智谱AI训练的语言模型 GLM-4 模型开发的，"
                    "你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具")
GLM4_JINJA = (
    "[gMASK]<sop>"
    "{% if tools %}<|system|>\n" + GLM4_TOOL_PROMPT + "{% for tool in tools %}"
    "{% set function = tool.function if tool.function is defined else tool %}"
    "\n\n## {{ function['name'] }}\n\n{{ function | tojson(indent=4) }}\n"
    "在调用上述函数时，请使用 Json 格式表示调用的参数。{% endfor %}{% endif %}"
    "{% for item in messages %}{% if item['content'] %}"
    "<|{{ 'observation' if item['role'] == 'tool' else item['role'] }}|>{{ item['metadata'] }}"
    "\n{{ item['content'] }}{% endif %}"
    "{% for call in item.tool_calls or [] %}"
    "{% set call = call.function if call.function is defined else call %}"
    "<|assistant|>{{ call.name }}\n"
    "{{ call.arguments if call.arguments is string else call.arguments | tojson }}"
    "{% endfor %}{% endfor %}"
    "{% if messages[-1].tool_calls %}<|observation|>"
    "{% elif messages[-1]['role'] == 'assistant' %}" + END_OF_TURN + "{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

# GLM-4-0414 (GLM-4-9B-0414, GLM-4-32B-0414; Glm4ForCausalLM): the text of the official
# chat_template of GLM-4-9B-0414's tokenizer_config.json (verbatim in tests/official_glm4.py,
# from xorbitsai/inference xinference/model/llm/llm_family.json, entry "glm4-0414", commit
# 7ecec16b; the same bytes as enapt/SwarmLLM's glm4_gguf_shipped.jinja, commit d237054e; sha256
# pinned there): `tools` as one system message ("# 可用工具", then per function
# "\n\n## {name}\n\n" + its JSON, indent 4, + "\n在调用上述函数时，请使用 Json 格式表示
# 调用的参数。"), then all system messages, then the others; an empty content is kept (unlike
# glm-4-9b-chat). The official text reads calls as assistant messages with `metadata` (the
# name; "<|assistant|>name \n" then the arguments) and results as role "observation"; this
# template reads OpenAI's `tool_calls` and role "tool" into those same texts. It adds the
# end-of-turn marker after a final reply (see END_OF_TURN), as ms-swift's glm4_0414 template
# trains it
# (GLM4_0414TemplateMeta: ChatGLM4TemplateMeta's suffix with the [gMASK]<sop> prefix); a final
# call is followed by <|observation|>, and trained with it, as for glm4.
GLM4_0414_TOOL_PROMPT = "# 可用工具"
GLM4_0414_JINJA = (
    "[gMASK]<sop>"
    "{% if tools %}<|system|>\n" + GLM4_0414_TOOL_PROMPT + "{% for tool in tools %}"
    "{% set function = tool.function if tool.function is defined else tool %}"
    # an expression, not text after a block tag: trim_blocks would drop the first "\n"
    "{{ '\n\n## ' ~ function['name'] ~ '\n\n' }}{{ function | tojson(indent=4) }}"
    "\n在调用上述函数时，请使用 Json 格式表示调用的参数。{% endfor %}{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'system' %}"
    "<|system|>\n{{ message['content'] }}{% endif %}{% endfor %}"
    "{% for message in messages if message['role'] != 'system' %}"
    "{% if message['role'] == 'user' %}<|user|>\n{{ message['content'] }}"
    "{% elif message['role'] == 'tool' %}<|observation|>\n{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if message['content'] or not message.tool_calls %}"
    "<|assistant|>\n{{ message['content'] }}{% endif %}"
    "{% for call in message.tool_calls or [] %}"
    "{% set call = call.function if call.function is defined else call %}"
    "<|assistant|>{{ call.name }} \n"
    "{{ call.arguments if call.arguments is string else call.arguments | tojson }}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% if messages[-1].tool_calls %}<|observation|>"
    "{% elif messages[-1]['role'] == 'assistant' %}" + END_OF_TURN + "{% endif %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

TEMPLATES = (
    TemplateSpec(
        name="chatglm2",
        jinja=CHATGLM2_JINJA,
        special_tokens={"eos_token": "</s>"},
        assistant_suffix="{eos_token}",
        add_special_tokens=True,
        description="ChatGLM2: [Round N]\\n\\n问：...\\n\\n答：... rounds after the "
                    "tokenizer's [gMASK] sop ids",
    ),
    TemplateSpec(
        name="chatglm3",
        jinja=CHATGLM3_JINJA,
        special_tokens={"eos_token": "</s>"},
        assistant_suffix=END_OF_TURN,
        stop_words=("<|observation|>", "</s>"),
        tool_calls="sft_plugin_chatglm.tool_calls:chatglm3",
        description="ChatGLM3: [gMASK]sop<|system|>/<|user|>/<|assistant|> role tokens",
    ),
    TemplateSpec(
        name="glm4",
        jinja=GLM4_JINJA,
        special_tokens={"eos_token": "<|endoftext|>"},
        assistant_suffix=END_OF_TURN,
        stop_words=("<|observation|>", "<|endoftext|>"),
        tool_calls="sft_plugin_chatglm.tool_calls:glm4",
        description="GLM-4: [gMASK]<sop><|system|>/<|user|>/<|assistant|> role tokens",
    ),
    TemplateSpec(
        name="glm4-0414",
        jinja=GLM4_0414_JINJA,
        special_tokens={"eos_token": "<|endoftext|>"},
        assistant_suffix=END_OF_TURN,
        stop_words=("<|observation|>", "<|endoftext|>"),
        tool_calls="sft_plugin_chatglm.tool_calls:glm4",
        description="GLM-4-0414: [gMASK]<sop><|system|>\\n.../<|user|>\\n.../<|assistant|>\\n...",
    ),
)

# ---------------------------------------------------------------------------------------------
# Model types. Hub ids: ms-swift swift/model/models/glm.py, Model('<ModelScope id>', '<HF id>')
# (the Hugging Face org THUDM is now zai-org; the old ids redirect). glm-4-9b-chat-hf is not in
# ms-swift: its ids are the ones Zhipu publishes (huggingface.co/zai-org/glm-4-9b-chat-hf,
# modelscope.cn/models/ZhipuAI/glm-4-9b-chat-hf).
# ---------------------------------------------------------------------------------------------

# model_type: (ModelScope id, Hugging Face id, template, description)
# ChatGLM2/3: the official checkpoints (remote-code layout), converted on load to transformers'
# Glm architecture (sft_plugin_chatglm.native): no remote code runs.
CONVERTED_MODELS = {
    "chatglm2-6b": ("ZhipuAI/chatglm2-6b", "zai-org/chatglm2-6b", "chatglm2",
                    "ChatGLM2-6B chat, converted on load to transformers' Glm"),
    "chatglm2-6b-32k": ("ZhipuAI/chatglm2-6b-32k", "zai-org/chatglm2-6b-32k", "chatglm2",
                        "ChatGLM2-6B-32K long-context chat, converted on load to "
                        "transformers' Glm"),
    "chatglm3-6b": ("ZhipuAI/chatglm3-6b", "zai-org/chatglm3-6b", "chatglm3",
                    "ChatGLM3-6B chat, converted on load to transformers' Glm"),
    "chatglm3-6b-32k": ("ZhipuAI/chatglm3-6b-32k", "zai-org/chatglm3-6b-32k", "chatglm3",
                        "ChatGLM3-6B-32K long-context chat, converted on load to "
                        "transformers' Glm"),
}
# GLM-4: Zhipu's own transformers-native release (GlmForCausalLM, the same weights as the
# remote-code glm-4-9b-chat). glm4-9b-chat is the name users arrive with (ms-swift's); it
# downloads that release too, since the remote-code one's tiktoken tokenizer could not be
# converted and checked here (sft_plugin_chatglm.native.check_glm4_folder).
NATIVE_MODELS = {
    "glm4-9b-chat": ("ZhipuAI/glm-4-9b-chat-hf", "zai-org/glm-4-9b-chat-hf", "glm4",
                     "GLM-4-9B-Chat, from Zhipu's transformers-native release "
                     "(glm-4-9b-chat-hf)"),
    "glm4-9b-chat-hf": ("ZhipuAI/glm-4-9b-chat-hf", "zai-org/glm-4-9b-chat-hf", "glm4",
                        "GLM-4-9B-Chat in the transformers-native GlmForCausalLM layout"),
}
# GLM-4-0414: transformers' own Glm4ForCausalLM (config model_type "glm4"), loaded as
# published. Ids: ms-swift swift/llm/model/model/glm.py (LLMModelType.glm4_0414).
GLM4_0414_MODELS = {
    "glm4-9b-0414": ("ZhipuAI/GLM-4-9B-0414", "zai-org/GLM-4-9B-0414",
                     "GLM-4-9B-0414 chat (Glm4ForCausalLM, MIT)"),
    "glm4-32b-0414": ("ZhipuAI/GLM-4-32B-0414", "zai-org/GLM-4-32B-0414",
                      "GLM-4-32B-0414 chat (Glm4ForCausalLM, MIT)"),
}
# transformers' GlmAttention / Glm4Attention: the projections of ChatGLM's fused
# query_key_value, ms-swift's default LoRA target for ChatGLM.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj")


def model_specs() -> list[ModelSpec]:
    specs = []
    for model_type, (modelscope, huggingface, template, description) in CONVERTED_MODELS.items():
        specs.append(ModelSpec(
            model_type=model_type,
            family="chatglm",
            template=template,
            hub_ids={"huggingface": huggingface, "modelscope": modelscope},
            lora_target_modules=LORA_TARGETS,
            # The user's folder is the official one: its remote-code config is "chatglm".
            config_model_types=("chatglm",),
            converted_to="glm",
            loader="sft_plugin_chatglm.native:load",
            tokenizer_loader="sft_plugin_chatglm.native:load_tokenizer",
            description=description,
        ))
    for model_type, (modelscope, huggingface, template, description) in NATIVE_MODELS.items():
        glm4 = model_type == "glm4-9b-chat"
        specs.append(ModelSpec(
            model_type=model_type,
            family="chatglm",
            template=template,
            hub_ids={"huggingface": huggingface, "modelscope": modelscope},
            lora_target_modules=LORA_TARGETS,
            # glm4-9b-chat also takes a remote-code folder, to refuse it by name
            config_model_types=("glm", "chatglm") if glm4 else ("glm",),
            loader="sft_plugin_chatglm.native:load_glm4" if glm4 else None,
            tokenizer_loader="sft_plugin_chatglm.native:load_glm4_tokenizer" if glm4 else None,
            description=description,
        ))
    for model_type, (modelscope, huggingface, description) in GLM4_0414_MODELS.items():
        specs.append(ModelSpec(
            model_type=model_type,
            family="chatglm",
            template="glm4-0414",
            hub_ids={"huggingface": huggingface, "modelscope": modelscope},
            lora_target_modules=LORA_TARGETS,
            config_model_types=("glm4",),
            description=description,
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
