"""sft-plugin-acme: Acme's chat template, model type and FAQ dataset for sft-sdk."""

from pathlib import Path

from sdk import hookimpl
from sdk.specs import DatasetSpec, ModelSpec, TemplateSpec

ACME_CHAT = TemplateSpec(
    name="acme-chat",
    system_format="<|system|>\n{content}\n",
    user_format="<|user|>\n{content}\n",
    assistant_prefix="<|assistant|>\n",
    assistant_suffix="{eos_token}",
    turn_separator="\n",
    stop_words=("<|user|>",),
    description="Acme's chat format",
)


@hookimpl
def register_templates(register):
    register(ACME_CHAT)


@hookimpl
def register_models(register):
    register(ModelSpec(
        model_type="acme-1b-chat",
        family="acme",
        template="acme-chat",
        hub_ids={"huggingface": "acme-ai/acme-1b-chat", "modelscope": "AcmeAI/acme-1b-chat"},
        lora_target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        config_model_types=("llama",),
        description="Acme 1B chat",
    ))


# Relative paths would be read from the user's current folder: name the files by this module's.
HERE = Path(__file__).parent


@hookimpl
def register_datasets(register):
    register(DatasetSpec(
        name="acme-faq",
        files=(str(HERE / "data" / "acme_faq.jsonl"),),
        format="messages",
        license="CC0-1.0",
        description="Questions about Acme, answered by Acme's assistant",
    ))
