"""The official Baichuan2-7B-Chat code (shared/data/remote_code/baichuan2-7b-chat), run under
transformers 5 with the fewest patches that let it run: the reference that the Llama
conversion is compared with. Test-only; nothing here is used by the plugin.

What transformers 5 broke, and what is done about it here:
- BaichuanTokenizer.__init__ calls ``super().__init__()`` before loading its SentencePiece
  model, and transformers 5's ``__init__`` calls ``get_vocab()``, which needs it (E4 in the
  folder's README): the model is loaded before the original ``__init__`` runs.
- ``PreTrainedModel`` no longer inherits ``GenerationMixin``, so the official class has no
  ``generate``: :func:`official_greedy` decodes greedily with the official forward and its own
  key/value cache (``prepare_inputs_for_generation``), as ``generate`` did for it.
- transformers 5's ``from_pretrained`` builds models on the meta device, where the rotary
  caches (plain attributes computed in ``__init__``, not buffers) stay: :func:`official_model`
  builds the class on the CPU and loads the state dict instead. (The mirror's
  ``from_pretrained`` also returns an untrained model when given a config object.)
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import REMOTE_CODE, official_module, randomize, save_official_checkpoint

OFFICIAL = REMOTE_CODE / "baichuan2-7b-chat"
# Tiny sizes under the official config keys; vocabulary, tokenizer and every other key real.
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            torch_dtype="float32")


def tiny_official_checkpoint(folder: Path) -> Path:
    """A random-weight Baichuan2-7B-Chat in the official layout: official config keys (tiny
    sizes), parameter names (W_pack, NormHead lm_head), code, tokenizer and generation config,
    weights in pytorch_model.bin as the hub repository ships them."""
    modeling = official_module(OFFICIAL, "modeling_baichuan")
    config = {**json.loads((OFFICIAL / "config.json").read_text(encoding="utf-8")), **TINY}
    model = modeling.BaichuanForCausalLM(modeling.BaichuanConfig(**config))
    randomize(model)
    return save_official_checkpoint(OFFICIAL, folder, config, model, weights="pytorch_model.bin")


def official_model(folder: Path):
    """The official BaichuanForCausalLM with the weights of ``folder``, in eval mode."""
    import torch

    modeling = official_module(OFFICIAL, "modeling_baichuan")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    model = modeling.BaichuanForCausalLM(modeling.BaichuanConfig(**config))
    state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def official_tokenizer(folder: Path):
    """BaichuanTokenizer of ``folder``, its SentencePiece model loaded first (E4)."""
    import sentencepiece

    tokenizer_class = official_module(OFFICIAL, "tokenization_baichuan").BaichuanTokenizer
    if not getattr(tokenizer_class, "_patched_for_transformers_5", False):
        original = tokenizer_class.__init__

        def init(self, vocab_file, *args, **kwargs):
            self.sp_model = sentencepiece.SentencePieceProcessor(
                **(kwargs.get("sp_model_kwargs") or {}))
            self.sp_model.Load(vocab_file)
            original(self, vocab_file, *args, **kwargs)

        tokenizer_class.__init__ = init
        tokenizer_class._patched_for_transformers_5 = True
    return tokenizer_class.from_pretrained(str(folder))


def official_chat_ids(model, tokenizer, messages) -> list[int]:
    """generation_utils.build_chat_input: the official chat format's ids."""
    build_chat_input = official_module(OFFICIAL, "generation_utils").build_chat_input
    return build_chat_input(model, tokenizer, messages)[0].tolist()


def official_greedy(model, input_ids, new_tokens: int) -> list[int]:
    """Greedy decoding with the official forward and its tuple key/value cache."""
    import torch

    ids, past = input_ids, None
    attention_mask = torch.ones_like(input_ids)
    generated = []
    with torch.no_grad():
        for _ in range(new_tokens):
            inputs = model.prepare_inputs_for_generation(ids, past_key_values=past,
                                                         attention_mask=attention_mask,
                                                         use_cache=True)
            output = model(**inputs, return_dict=True)
            past = output.past_key_values
            token = output.logits[:, -1].argmax(-1, keepdim=True)
            generated.append(int(token))
            ids = torch.cat([ids, token], dim=-1)
            attention_mask = torch.cat([attention_mask, torch.ones_like(token)], dim=-1)
    return generated
