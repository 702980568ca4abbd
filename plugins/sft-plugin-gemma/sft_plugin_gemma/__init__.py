"""Gemma model types: Gemma 2 (Gemma2ForCausalLM) and Gemma 3 instruction-tuned models, all
native to transformers. Gemma 3 1B is a text model (Gemma3ForCausalLM); Gemma 3 4B, 12B and
27B are image-text checkpoints (Gemma3ForConditionalGeneration) that train here as text models:
``load_text_model`` loads their language model alone (see there).

Hub ids: google/gemma-{2,3}-*-it on Hugging Face, LLM-Research/gemma-{2,3}-*-it on ModelScope
(hiyouga/LLaMA-Factory src/llamafactory/extras/constants.py, commit ff6d4d12; ms-swift's
swift/llm/model/model/gemma.py registers the same ModelScope ids).

The chat templates are the official ones, kept byte for byte in this package (NAME.jinja):

- ``gemma.jinja``: the ``chat_template`` of the Gemma 2 -it tokenizer_config.json (Gemma 1.1's
  text, unchanged): a system message is refused ("System role not supported"), roles must
  alternate, the assistant's role is ``model``, every text is trimmed. Taken from
  microsoft/onnxruntime-extensions test/data/gemma/tokenizer_config.json (commit 319f8d2c);
  oxide-lab/Oxide-Lab src-tauri/src/core/templates/gemma2.rs quotes the same text as gemma2's.
- ``gemma3.jinja``: the ``chat_template`` of google/gemma-3-4b-it tokenizer_config.json: a
  system message is folded into the first user turn (its text and a blank line), image parts
  become ``<start_of_image>``. Taken from microsoft/onnxruntime-extensions
  test/data/models/gemma-3/tokenizer_config.json (commit 319f8d2c; the same text as its
  test/data/gemma-3-chat/chat_template.json). The 1B, 12B and 27B repositories are taken to
  carry the same text (LLaMA-Factory renders all four alike), not checked against their files.

Without a system message both render the same text. Gemma's tokenizer is not redistributable
offline (the weights' terms gate it), so the tests hold rendering to these texts.
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from sdk import hookimpl
from sdk.specs import ModelSpec, TemplateSpec

# every linear layer of the decoder (attention and the GeGLU MLP), named so that a Gemma 3
# image-text checkpoint's vision tower would get none
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SPECIAL_TOKENS = {"bos_token": "<bos>", "eos_token": "<eos>"}
# generation_config.json of the -it models stops at <eos> (1) and <end_of_turn> (106/107)
STOP_WORDS = ("<end_of_turn>", "<eos>")
GEMMA3_MULTIMODAL = "gemma3"  # config.json model_type of the 4B/12B/27B image-text checkpoints
GEMMA3_TEXT = "gemma3_text"  # 1B, and what a 4B/12B/27B text model exports to
# The language model's weights in an image-text checkpoint, under Gemma3ForCausalLM's names:
# the Hub's files say language_model.model.*, transformers 5's own saves model.language_model.*.
LANGUAGE_MODEL_KEYS = {r"^language_model\.model\.": "model.",
                       r"^model\.language_model\.": "model."}
IMAGE_KEYS = r"^(model\.)?(vision_tower|multi_modal_projector)\."


def official_jinja(name: str) -> str:
    return (files(__name__) / f"{name}.jinja").read_text(encoding="utf-8")


TEMPLATES = (
    TemplateSpec(name="gemma", jinja=official_jinja("gemma"), assistant_suffix="<end_of_turn>",
                 special_tokens=SPECIAL_TOKENS, stop_words=STOP_WORDS,
                 description="Gemma 2: <start_of_turn>user ... <end_of_turn>, role 'model', "
                             "no system message"),
    TemplateSpec(name="gemma3", jinja=official_jinja("gemma3"),
                 assistant_suffix="<end_of_turn>", special_tokens=SPECIAL_TOKENS,
                 stop_words=STOP_WORDS,
                 description="Gemma 3: Gemma 2's turns, the system message folded into the "
                             "first user turn"),
)

# model_type: (template, Hugging Face id, description)
MODELS = {
    "gemma2-2b-it": ("gemma", "google/gemma-2-2b-it", "Gemma 2 2B instruct"),
    "gemma2-9b-it": ("gemma", "google/gemma-2-9b-it", "Gemma 2 9B instruct"),
    "gemma2-27b-it": ("gemma", "google/gemma-2-27b-it", "Gemma 2 27B instruct"),
    "gemma3-1b-it": ("gemma3", "google/gemma-3-1b-it", "Gemma 3 1B instruct (text)"),
    "gemma3-4b-it": ("gemma3", "google/gemma-3-4b-it",
                     "Gemma 3 4B instruct, its language model alone (no vision tower)"),
    "gemma3-12b-it": ("gemma3", "google/gemma-3-12b-it",
                      "Gemma 3 12B instruct, its language model alone (no vision tower)"),
    "gemma3-27b-it": ("gemma3", "google/gemma-3-27b-it",
                      "Gemma 3 27B instruct, its language model alone (no vision tower)"),
}


def load_text_model(spec: ModelSpec, options: Any) -> tuple[Any, Any]:
    """Gemma 3's loader. An image-text checkpoint (config ``model_type`` gemma3) loads as the
    text model Gemma3ForCausalLM of its ``text_config``, its language model's weights renamed
    to that class's and the vision tower's left unread; transformers' AutoModelForCausalLM
    would build Gemma3ForConditionalGeneration, vision tower included. Adapters then name the
    text model's modules, and ``sdk export --merge-lora`` writes a gemma3_text model. Any
    other folder (1B, or such an export) loads as it is."""
    from sdk.models.loader import folder_config, load_pretrained, model_folder

    folder = model_folder(spec, options)
    if folder_config(folder).get("model_type") != GEMMA3_MULTIMODAL:
        return load_pretrained(folder, options)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder)).text_config
    if options.rope_scaling:
        from sdk.models.rope import stretch_rope

        stretch_rope(config, options.rope_scaling, options.rope_factor, options.context_length,
                     str(folder))
    from transformers import Gemma3ForCausalLM

    # the vision tower's and projector's weights are left unread on purpose: not a line each
    # in transformers' load report (hundreds for a real checkpoint)
    ignored = Gemma3ForCausalLM._keys_to_ignore_on_load_unexpected
    Gemma3ForCausalLM._keys_to_ignore_on_load_unexpected = [IMAGE_KEYS]
    try:
        model, tokenizer = load_pretrained(
            folder, options, model_kwargs={"config": config, "key_mapping": LANGUAGE_MODEL_KEYS})
    finally:
        Gemma3ForCausalLM._keys_to_ignore_on_load_unexpected = ignored
    # transformers saves a model under the names it was loaded from: without this, a merged
    # export or a full fine-tune's checkpoint would be a gemma3_text model whose weights carry
    # the image-text checkpoint's names, which no text model loads
    model._weight_conversions = []
    return model, tokenizer


@hookimpl
def register_templates(register):
    for template in TEMPLATES:
        register(template)


@hookimpl
def register_models(register):
    for model_type, (template, huggingface, description) in MODELS.items():
        gemma3 = template == "gemma3"
        register(ModelSpec(
            model_type=model_type,
            family="gemma",
            template=template,
            hub_ids={"huggingface": huggingface,
                     "modelscope": "LLM-Research/" + huggingface.split("/")[1]},
            lora_target_modules=LORA_TARGETS,
            loader=f"{__name__}:load_text_model" if gemma3 else None,
            config_model_types=(GEMMA3_TEXT, GEMMA3_MULTIMODAL) if gemma3 else ("gemma2",),
            description=description,
        ))
