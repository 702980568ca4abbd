"""A third-party template plugin in one file: the Stanford Alpaca prompt format.

    sdk --plugin examples/plugins/alpaca_template.py templates
    sdk --plugin examples/plugins/alpaca_template.py sft --model-type smollm2-135m-instruct \
        --template alpaca --dataset my_alpaca_data.json

To ship it as a package instead, put the same code in a module and declare it under
[project.entry-points.sft_sdk] in its pyproject.toml.
"""

from sdk import hookimpl
from sdk.specs import TemplateSpec

ALPACA = TemplateSpec(
    name="alpaca",
    system_format="{content}\n\n",
    user_format="### Instruction:\n{content}\n\n",
    assistant_prefix="### Response:\n",
    assistant_suffix="{eos_token}",
    turn_separator="\n\n",
    default_system="Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.",
    stop_words=("### Instruction:",),
    description="Stanford Alpaca prompt (### Instruction / ### Response)",
)


@hookimpl
def register_templates(register):
    register(ALPACA)
