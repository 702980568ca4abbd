"""The official InternLM (v1) and InternLM2 code and tokenizers as the reference that the
native conversion is tested against (test-only; a support module, not collected).

The files are the ones in shared/data/remote_code (README there). Under transformers 5 they
need these patches, each for one thing transformers 5 broke:

- The model classes are built on the CPU and their weights loaded with ``load_state_dict``,
  not with ``from_pretrained``: transformers 5 builds the model on the meta device and leaves
  buffers that the checkpoint does not hold, the rotary ``cos_cached`` / ``sin_cached`` these
  classes compute in ``__init__``, as uninitialised memory (NaN logits, the issue's empty
  InternLM v1 reply). Built on the CPU, the official ``__init__`` computes them.
- ``GenerationMixin`` is mixed into the class: transformers 5's ``PreTrainedModel`` no longer
  inherits it (its auto classes add it to remote code, importing the module does not).
- InternLM2: ``config.rope_parameters`` set to config.json's ``rope_scaling`` (README E6):
  transformers 5 turns ``rope_scaling: null`` into ``{"rope_type": "default", ...}`` and
  ``config.rope_scaling`` returns that dict, so ``_init_rope`` skips its ``None`` branch and
  fails on ``["type"]``.
- InternLM2's tokenizer is the slow class of tokenization_internlm2.py, loaded directly:
  ``AutoTokenizer`` returns the fast class, whose ids are wrong under transformers 5 (E5).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from conftest import REMOTE_CODE, official_module, randomize, save_official_checkpoint

V1 = REMOTE_CODE / "internlm-chat-7b"
V2 = REMOTE_CODE / "internlm2-chat-7b"
# module and class names of each family's official code
CODE = {
    "internlm": ("configuration_internlm", "InternLMConfig", "modeling_internlm",
                 "InternLMForCausalLM", "tokenization_internlm", "InternLMTokenizer"),
    "internlm2": ("configuration_internlm2", "InternLM2Config", "modeling_internlm2",
                  "InternLM2ForCausalLM", "tokenization_internlm2", "InternLM2Tokenizer"),
}
# Tiny sizes over the official config.json (real vocabulary and tokenizer); InternLM2 with 2
# key-value groups of 2 query heads, so that a wrong unpacking of wqkv shows, and a window of
# 32 positions, so that its rope scaling's range past the window is cheap to test.
TINY = {"internlm": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4),
        "internlm2": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=32)}


def family(folder: Path) -> str:
    return json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"]


def official_class(folder: Path) -> Any:
    """The official causal-LM class of ``folder``, with GenerationMixin (see above)."""
    from transformers import GenerationMixin

    _, _, modeling, name, _, _ = CODE[family(folder)]
    base = getattr(official_module(folder, modeling), name)
    return type(name, (base, GenerationMixin), {})


def official_config(code: Path, settings: dict[str, Any]) -> Any:
    """The official config class of the code in ``code`` given config.json's ``settings``."""
    module, name, *_ = CODE[settings["model_type"]]
    # a copy: transformers 5 adds its rope keys to the rope_scaling dict it is given
    config = getattr(official_module(code, module), name)(**copy.deepcopy(settings))
    if settings["model_type"] == "internlm2":  # E6, see above
        config.rope_parameters = copy.deepcopy(settings.get("rope_scaling"))
    return config


def tiny_official_checkpoint(source: Path, destination: Path, **settings: Any) -> Path:
    """A tiny random-weight checkpoint in the official layout of ``source``'s family: its
    config.json with TINY sizes (and ``settings``), its code and tokenizer files, seeded
    weights under the official names. InternLM v1 as pytorch_model.bin with the rotary
    inv_freq of each layer, as the 2023 internlm-chat-7b checkpoints store it (their code
    registered it as a persistent buffer); InternLM2 as safetensors."""
    kind = family(source)
    config = {**json.loads((source / "config.json").read_text(encoding="utf-8")),
              **TINY[kind], **settings}
    model = official_class(source)(official_config(source, config))
    randomize(model)
    if kind == "internlm":
        for module in model.modules():
            if hasattr(module, "inv_freq"):
                module._non_persistent_buffers_set.discard("inv_freq")
    weights = "pytorch_model.bin" if kind == "internlm" else "model.safetensors"
    return save_official_checkpoint(source, destination, config, model, weights=weights)


def official_model(folder: Path) -> Any:
    """The official model of a checkpoint folder, fp32, in eval mode (see the patches)."""
    import torch

    settings = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = official_class(folder)(official_config(folder, settings))
    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(folder / "model.safetensors"))
    else:
        state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    # the stored inv_freq is the one this code computes (a non-persistent buffer in it)
    state = {name: value for name, value in state.items() if ".rotary_emb." not in name}
    model.load_state_dict(state, strict=True)
    return model.float().eval()


def official_tokenizer(folder: Path) -> Any:
    """The official slow tokenizer (tokenization_internlm*.py) of ``folder``."""
    *_, module, name = CODE[family(folder)]
    return getattr(official_module(folder, module), name).from_pretrained(str(folder))


class Recorder:
    """Stands in for the tokenizer given to the official ``build_inputs``: records the prompt
    text it builds and tokenizes it with the official tokenizer."""

    def __init__(self, tokenizer: Any):
        self.tokenizer, self.prompts = tokenizer, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def __call__(self, texts: list[str], **kwargs: Any) -> Any:
        self.prompts.extend(texts)
        return self.tokenizer(texts, **kwargs)


def build_inputs(folder: Path, tokenizer: Any, query: str, history: list[tuple[str, str]],
                 meta_instruction: str = "") -> tuple[str, list[int]]:
    """The prompt text and ids of the official ``build_inputs`` of ``folder``'s modeling file
    (a method that uses nothing of the model)."""
    recorder = Recorder(tokenizer)
    arguments = (query, history) + ((meta_instruction,) if family(folder) == "internlm2" else ())
    inputs = official_class(folder).build_inputs(None, recorder, *arguments)
    return recorder.prompts[0], inputs["input_ids"][0].tolist()


def internlm_chat_7b_prompt(query: str, history: list[tuple[str, str]],
                            meta_instruction: str = "") -> str:
    """The text of ``build_inputs`` in internlm/internlm-chat-7b's modeling_internlm.py at
    revision 739d3699446ad35bff7123c47e1e54bc9acdf79c (line 859; its chat() passes the
    InternLM meta instruction): "<s><|System|>:{meta}\\n" ("<s>" alone without one), then
    "<|User|>:{query}\\n<|Bot|>:{reply}<eoa>\\n" per past turn, then
    "<|User|>:{query}\\n<|Bot|>:". The shared folder's modeling_internlm.py is internlm-20b's
    (2023-10), whose build_inputs writes another format ("<|User|>:{query}<eoh>\\n", no
    system). Returned without the leading "<s>": the official tokenizer adds bos itself, and
    that revision, writing it too, fed the model two; InternLM2's build_inputs (and ms-swift,
    lmdeploy) give one."""
    prompt = f"<|System|>:{meta_instruction}\n" if meta_instruction else ""
    for question, reply in history:
        prompt += f"<|User|>:{question}\n<|Bot|>:{reply}<eoa>\n"
    return prompt + f"<|User|>:{query}\n<|Bot|>:"
