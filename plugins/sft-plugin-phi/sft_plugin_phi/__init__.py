"""Microsoft Phi model types: Phi-3.5-mini-instruct, Phi-4 (14B) and Phi-4-mini-instruct.

All three are Phi3ForCausalLM (config ``model_type`` "phi3"), native to transformers, so they
load with the generic loader; no remote code. Phi3 fuses the attention projections into one
``qkv_proj`` (and the MLP's into ``gate_up_proj``), so LoRA targets ``qkv_proj`` where the
other families target q_proj, k_proj and v_proj.

Hub ids are the ``Model('<ModelScope id>', '<Hugging Face id>')`` pairs of ms-swift
(modelscope/ms-swift, swift/llm/model/model/microsoft.py, commit 0ba19013: LLMModelType.phi3
and phi4).

The chat templates are the official ones, kept byte for byte in this package (NAME.jinja),
each the ``chat_template`` of the model's tokenizer_config.json:

- ``phi3.5.jinja``: microsoft/Phi-3.5-mini-instruct, as llama.cpp keeps it
  (ggerganov/llama.cpp models/templates/microsoft-Phi-3.5-mini-instruct.jinja, commit
  7b5e0803): ``<|user|>\\n...<|end|>\\n``, an empty system prompt left out, and ``eos_token``
  after the last turn unless a generation prompt follows.
- ``phi4.jinja``: microsoft/phi-4, as quoted from it in ShishirPatil/gorilla
  berkeley-function-call-leaderboard/bfcl_eval/model_handler/local_inference/phi.py (commit
  d858a2a9): ``<|im_start|>user<|im_sep|>...<|im_end|>`` with no newlines.
- ``phi4-mini.jinja``: microsoft/Phi-4-mini-instruct (tokenizer_config.json line 104), as
  quoted in guidance-ai/guidance guidance/chat.py (commit c7e2fbca) and in the same gorilla
  file: ``<|user|>...<|end|>`` with no newlines, ``eos_token`` at the end. Its tool format
  reads a ``tools`` string on the system message, which sft-sdk's messages do not carry, so
  a conversation with tools is refused for it rather than rendered without them.
"""

from __future__ import annotations

from importlib.resources import files

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec

FAMILY = "phi"
LORA_TARGETS = ("qkv_proj",)
CONFIG_MODEL_TYPES = ("phi3",)
# The tokenizers' special tokens (tokenizer_config.json of each model).
PHI35_TOKENS = {"bos_token": "<s>", "eos_token": "<|endoftext|>"}
PHI4_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>"}
PHI4_MINI_TOKENS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}


def official_jinja(name: str) -> str:
    return (files(__name__) / f"{name}.jinja").read_text(encoding="utf-8")


TEMPLATES = (
    TemplateSpec(name="phi3.5", jinja=official_jinja("phi3.5"), assistant_suffix="<|end|>",
                 special_tokens=PHI35_TOKENS, stop_words=("<|end|>", "<|endoftext|>"),
                 description="Phi-3.5-mini-instruct: <|user|>\\nq<|end|>\\n<|assistant|>\\na"
                             "<|end|>\\n"),
    TemplateSpec(name="phi4", jinja=official_jinja("phi4"), assistant_suffix="<|im_end|>",
                 special_tokens=PHI4_TOKENS, stop_words=("<|im_end|>", "<|endoftext|>"),
                 description="Phi-4: <|im_start|>user<|im_sep|>q<|im_end|>, no newlines"),
    TemplateSpec(name="phi4-mini", jinja=official_jinja("phi4-mini"), assistant_suffix="<|end|>",
                 special_tokens=PHI4_MINI_TOKENS, stop_words=("<|end|>", "<|endoftext|>"),
                 description="Phi-4-mini-instruct: <|user|>q<|end|><|assistant|>a<|end|>"),
)

# model_type: (template, ModelScope id, Hugging Face id, description). Phi-4 is "phi4-14b", not
# "phi4": ms-swift 3.x's --model_type phi4 names the family (phi-4 and Phi-4-mini), and so
# reads as one here (sdk.compat) only when no model type has that very name.
MODELS = {
    "phi3.5-mini-instruct": ("phi3.5", "LLM-Research/Phi-3.5-mini-instruct",
                             "microsoft/Phi-3.5-mini-instruct",
                             "Phi-3.5-mini-instruct 3.8B, 128k context (MIT)"),
    "phi4-14b": ("phi4", "LLM-Research/phi-4", "microsoft/phi-4", "Phi-4 14B (MIT)"),
    "phi4-mini-instruct": ("phi4-mini", "LLM-Research/Phi-4-mini-instruct",
                           "microsoft/Phi-4-mini-instruct",
                           "Phi-4-mini-instruct 3.8B, 200k vocabulary (MIT)"),
}


@hookimpl
def register_templates(register):
    for template in TEMPLATES:
        register(template)


@hookimpl
def register_models(register):
    for model_type, (template, modelscope, huggingface, description) in MODELS.items():
        register(ModelSpec(
            model_type=model_type,
            family=FAMILY,
            template=template,
            hub_ids={"huggingface": huggingface, "modelscope": modelscope},
            lora_target_modules=LORA_TARGETS,
            config_model_types=CONFIG_MODEL_TYPES,
            description=description,
        ))
