"""Save a tiny random Llama with a real tokenizer, to try a model type on a CPU.

    python make_tiny_model.py TOKENIZER OUTPUT_FOLDER

TOKENIZER is a hub id (e.g. Qwen/Qwen2.5-0.5B-Instruct) or a local tokenizer folder. The model
learns nothing useful: it is for checking that `sdk sft` runs.
"""

import sys

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

tokenizer_source, output = sys.argv[1], sys.argv[2]
tokenizer = AutoTokenizer.from_pretrained(tokenizer_source)
# As in a real Acme checkpoint, each of the template's tags is one token.
tokenizer.add_special_tokens({"eos_token": "<|end|>", "additional_special_tokens": [
    "<|system|>", "<|user|>", "<|assistant|>"]})
if tokenizer.pad_token is None:
    tokenizer.pad_token = tokenizer.eos_token
torch.manual_seed(0)
config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=512, tie_word_embeddings=True,
                     eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
LlamaForCausalLM(config).save_pretrained(output)
tokenizer.save_pretrained(output)
print(f"saved a {config.model_type} model to {output}")
