"""The plugin's conformance tests, written with sdk.testing (its fixtures, such as
sdk_registry, come with sft-sdk through pytest's plugin entry point)."""

from sdk.testing import (
    assert_dataset_readable,
    assert_template_parity,
    assert_trained_spans,
    template_spec,
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Good morning"},
     {"role": "assistant", "content": "Morning."}, {"role": "user", "content": "Thanks"},
     {"role": "assistant", "content": "You are welcome."}],
]


def test_the_template_renders_as_the_official_chat_template(sdk_registry, tokenizer_folder):
    assert_template_parity(template_spec(sdk_registry, "example-chatml"), tokenizer_folder,
                           CONVERSATIONS)


def test_only_the_replies_and_their_end_of_turn_are_trained(sdk_registry, tokenizer_folder):
    assert_trained_spans(template_spec(sdk_registry, "example-chatml"), tokenizer_folder,
                         CONVERSATIONS[1], ["Morning.<|im_end|>", "You are welcome.<|im_end|>"])


def test_the_dataset_reads_and_renders_with_the_template(sdk_registry):
    conversations = assert_dataset_readable(sdk_registry, "example-greetings",
                                            template_spec(sdk_registry, "example-chatml"))
    assert len(conversations) == 3
