"""A tokenizer folder for the template checks. A real plugin's CI uses its model's own
tokenizer folder (committed, or downloaded in a CI step); this example builds a tiny one so
that its CI needs no download: a byte-level BPE with ChatML's special tokens and the model's
official chat template."""

from pathlib import Path

import pytest

# The official chat template of the example model (ChatML), as its tokenizer_config.json has it.
OFFICIAL_CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
SPECIAL_TOKENS = ["<|im_start|>", "<|im_end|>"]


@pytest.fixture(scope="session")
def tokenizer_folder(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = ["Hello! How can I help?", "Good morning. You are welcome. Goodbye!",
              "system user assistant You are terse."]
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                        chat_template=OFFICIAL_CHAT_TEMPLATE)
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(folder)
    return folder
