"""sft-plugin-acme's checks, with sft-sdk's conformance kit."""

import json
from pathlib import Path

from sdk.plugins import load_plugins
from sdk.testing import (
    assert_dataset_readable,
    assert_trained_spans,
    template_spec,
    train_and_reload,
)

REGISTRY = load_plugins().registry  # what `sdk` loads: the installed plugin among them
TINY = Path("tiny-acme")  # the tiny model of step 4, with its tokenizer


def test_only_the_reply_and_its_end_of_sequence_train():
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY)
    messages = json.loads(Path("hello.json").read_text())
    assert_trained_spans(template_spec(REGISTRY, "acme-chat"), tokenizer, messages,
                         ["Rockets, anvils and giant magnets.<|end|>"])


def test_the_dataset_reads_and_renders():
    assert_dataset_readable(REGISTRY, "acme-faq", template_spec(REGISTRY, "acme-chat"))


def test_a_tiny_acme_model_trains_and_reloads(tmp_path):
    train_and_reload(REGISTRY, "acme-1b-chat", TINY, "acme-faq", tmp_path)
