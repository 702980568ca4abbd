"""The conformance kit (sdk.testing): what a third-party plugin's CI runs. The example plugin's
own tests pass as its CI runs them; a check that finds a difference fails saying what differs;
pytest loads the kit through the pytest11 entry point cheaply (no torch at import)."""

import os
import subprocess
import sys
import tomllib

import pytest

from conftest import CONVERSATIONS, REPO, TOKENIZERS
from sdk.plugins import load_plugins
from sdk.testing import assert_template_parity, assert_trained_spans, template_spec

EXAMPLE = REPO / "examples" / "sft-plugin-example"


def test_the_example_plugins_own_tests_pass_with_the_kits_fixtures():
    # As its CI runs them, but with the plugin and the kit named rather than installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(EXAMPLE)]),
           "SFT_SDK_PLUGINS": str(EXAMPLE / "sft_plugin_example")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "sdk.testing", "-p", "no:cacheprovider", "-q",
         "--rootdir", str(EXAMPLE), "--confcutdir", str(EXAMPLE), "tests"],
        cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    assert (EXAMPLE / ".github" / "workflows" / "test.yml").is_file()


def test_the_entry_point_is_the_kit_and_importing_it_loads_no_torch():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"sdk.testing": "sdk.testing"}
    code = ("import sys, sdk.testing; "
            "print(sorted({'torch', 'transformers', 'peft'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert result.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def registry():
    return load_plugins().registry


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")


def test_parity_fails_naming_the_template_and_both_texts(registry, qwen_tokenizer):
    assert_template_parity(template_spec(registry, "qwen1.5"), TOKENIZERS / "qwen2",
                           [CONVERSATIONS["multi turn"]])
    # plain ChatML lacks the default system prompt Qwen2's official template adds
    with pytest.raises(AssertionError, match=r"template 'chatml' \(add_generation_prompt="
                                             r"False\) renders\n'<\|im_start\|>user"):
        assert_template_parity(template_spec(registry, "chatml"), qwen_tokenizer,
                               [CONVERSATIONS["multi turn"]])
    with pytest.raises(AssertionError, match="no template 'qwn' is registered; registered: "):
        template_spec(registry, "qwn")


def test_trained_spans_fail_naming_what_was_trained(registry, qwen_tokenizer):
    spec = template_spec(registry, "qwen1.5")
    replies = ["Hello! How can I help?<|im_end|>", "Why did the LLM cross the road?<|im_end|>"]
    assert_trained_spans(spec, qwen_tokenizer, CONVERSATIONS["multi turn"], replies)
    assert_trained_spans(spec, qwen_tokenizer, CONVERSATIONS["multi turn"], replies[1:],
                         loss_scope="last")
    with pytest.raises(AssertionError, match=r"template 'qwen1.5' \(loss_scope=all\) trains "
                                             r"\['Hello! How can I help\?<\|im_end\|>'"):
        assert_trained_spans(spec, qwen_tokenizer, CONVERSATIONS["multi turn"], replies[1:])
