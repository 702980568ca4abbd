"""The official chat templates of GLM-4-9B-Chat and GLM-4-0414, verbatim, for the parity tests.
Test support, not collected (no test_ prefix).

GLM-4-9B-Chat's source: the "chat_template" of THUDM/glm-4-9b-chat tokenizer_config.json, quoted
in full (as the JSON string) in ShishirPatil/gorilla berkeley-function-call-leaderboard/bfcl_eval/
model_handler/local_inference/glm.py, GLMHandler._format_prompt, commit
8baf21262876a16558adcf8880eaad145a0b85d3; GLM-4-0414's: see OFFICIAL_GLM4_0414_CHAT_TEMPLATE. The
real tokenizers are not available offline, so these texts stand in for them: the tests render
them with transformers' own jinja renderer."""

OFFICIAL_GLM4_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for item in messages %}{% if item['tools'] is defined %}<|system|>"
    "\n你是一个名为 ChatGLM 的人工智能助手。你是基于智谱AI训练的语言模型 GLM-4 模型开发"
    "的，你的任务是针对用户的问题和要求提供适当的答复和支持。\n\n# 可用工具{% set tools"
    " = item['tools'] %}{% for tool in tools %}{% if tool['type'] == 'function' %}\n\n#"
    "# {{ tool['function']['name'] }}\n\n{{ tool['function'] | tojson(indent=4) }}\n在"
    "调用上述函数时，请使用 Json 格式表示调用的参数。{% elif tool['type'] == 'python' %"
    "}\n\n## python\n\n当你向 `python` 发送包含 Python 代码的消息时，该代码将会在一个有"
    "状态的 Jupyter notebook 环境中执行。\n`python` 返回代码执行的输出，或在执行 60 秒"
    "后返回超时。\n`/mnt/data` 将会持久化存储你的文件。在此会话中，`python` 无法访问互"
    "联网。不要使用 `python` 进行任何网络请求或者在线 API 调用，这些在线内容的访问将不"
    "会成功。{% elif tool['type'] == 'simple_browser' %}\n\n## simple_browser\n\n你可以"
    "使用 `simple_browser` 工具。该工具支持以下函数：\n`search(query: str, recency_days"
    ": int)`：使用搜索引擎进行查询并显示结果，可以使用 `recency_days` 参数控制搜索内容"
    "的时效性。\n`mclick(ids: list[int])`：获取一系列指定 id 的页面内容。每次调用时，须"
    "选择3-10个页面。选择多个角度的页面，同时尽可能选择可信任的信息来源。考虑到部分页面"
    "是无法加载的，你也可以多打开一些可能有用的页面而不用担心内容过多。\n`open_url(url:"
    " str)`：打开指定的 URL。\n\n使用 `【{引用 id}†{引用文本}】` 来引用内容。\n\n操作步"
    "骤：1. 使用 `search` 来获得信息列表; 2. 使用 `mclick` 来获取指定 ID 页面的内容; 3."
    " 根据获得的内容进行回复。在回复中应当引用信息来源。\n 如果用户提供了 URL，也可以用"
    " `open_url` 直接打开页面。\n如果初次搜索结果没有找到合适的信息，也可以再次使用 `se"
    "arch` 进行搜索。{% elif tool['type'] == 'cogview' %}\n\n## cogview\n\n如果用户的请"
    "求中包含了对图像的描述，你可以使用 `cogview` 来生成图像并展示给用户。你需要向 `cog"
    "view` 发送图像描述，规则：\n- 发送给 `cogview` 的消息必须使用英语。用户的中文描述"
    "必须完全翻译为英语。\n- 应当尽可能详细地描述图像生成的需求，需求描述约 100 英文单"
    "词。\n- 保持用户原始描述的意图。不要虚构内容或者没见过的人物。\n- 如无特殊说明，所"
    "在地为中国，持有中国立场并遵循中国社会主义价值观。{% endif %}{% endfor %}{% endif "
    "%}{% if item['content'] %}<|{{ item['role'] }}|>{{ item['metadata'] }}\n{{ item['c"
    "ontent'] }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% en"
    "dif %}"
)

# GLM-4-0414: the chat_template of GLM-4-9B-0414's tokenizer_config.json, verbatim (sha256
# pinned in test_glm4_tools.py), as two projects hold it byte for byte alike:
# xorbitsai/inference xinference/model/llm/llm_family.json, entry "glm4-0414" (zai-org/
# GLM-4-9B-0414, GLM-4-32B-0414), commit 7ecec16b63383e18e4af790c4b522fb7d79f7e77 (added in
# c9b4453b, "support glm4-0414"); and enapt/SwarmLLM src/inference/chat_template/fixtures/
# glm4_gguf_shipped.jinja, commit d237054e2992d7c8a652b25584786bfc1466983b (the template a GGUF
# of glm-4-9b-0414 carries, which llama.cpp's converter copies from tokenizer_config.json).
OFFICIAL_GLM4_0414_CHAT_TEMPLATE = (
    "[gMASK]<sop>{%- if tools -%}<|system|>\n# 可用工具\n{% for tool in tools %}"
    "{%- set function = tool.function if tool.get(\"function\") else tool %}"
    "\n\n## {{ function.name }}\n\n{{ function | tojson(indent=4, ensure_ascii=False) }}"
    "\n在调用上述函数时，请使用 Json 格式表示调用的参数。"
    "{%- endfor %}{%- endif -%}{%- for msg in messages %}"
    "{%- if msg.role == 'system' %}<|system|>\n{{ msg.content }}{%- endif %}{%- endfor %}"
    "{%- for message in messages if message.role != 'system' %}"
    "{%- set role = message['role'] %}{%- set content = message['content'] %}"
    "{%- set meta = message.get(\"metadata\", \"\") %}"
    "{%- if role == 'user' %}<|user|>\n{{ content }}"
    "{%- elif role == 'assistant' and not meta %}<|assistant|>\n{{ content }}"
    "{%- elif role == 'assistant' and meta %}<|assistant|>{{ meta }} \n{{ content }}"
    "{%- elif role == 'observation' %}<|observation|>\n{{ content }}{%- endif %}"
    "{%- endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
