"""Generic templates that any model can use; model families bring their own."""

from sdk.hookspecs import hookimpl
from sdk.specs import TemplateSpec

CHATML = TemplateSpec(
    name="chatml",
    system_format="<|im_start|>system\n{content}<|im_end|>\n",
    user_format="<|im_start|>user\n{content}<|im_end|>\n",
    assistant_prefix="<|im_start|>assistant\n",
    assistant_suffix="<|im_end|>",
    turn_separator="\n",
    stop_words=("<|im_end|>",),
    description="ChatML (<|im_start|>role ... <|im_end|>), no default system prompt",
)

# For base models without a chat format of their own: plain-text roles, every reply ends
# with the tokenizer's end-of-sequence token so the model learns to stop.
DEFAULT = TemplateSpec(
    name="default",
    system_format="{content}\n\n",
    user_format="### Human:\n{content}\n\n",
    assistant_prefix="### Assistant:\n",
    assistant_suffix="{eos_token}",
    turn_separator="\n\n",
    stop_words=("### Human:",),
    description="'### Human:' / '### Assistant:' plain text, replies end with the EOS token",
)


@hookimpl
def register_templates(register):
    register(CHATML)
    register(DEFAULT)
