"""The Ollama Modelfile of `sdk export --to gguf --ollama`: its Go TEMPLATE prompts every
conversation as the sdk template renders it (with Ollama's SYSTEM default added as Ollama adds
it), through our interpreter of the subset and, where `go` is installed, through Go's own
text/template; templates that do not split into fixed turns are refused with the reason."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from conftest import CONVERSATIONS, LLAMA_CPP_CONVERSATION, TOKENIZERS
from sdk.errors import SdkError
from sdk.ollama import modelfile, render_go, split_turns, trims_contents
from sdk.plugins import load_plugins
from sdk.templates.engine import Template

REGISTRY = load_plugins([]).registry
RENDER_GO = Path(__file__).parent / "data" / "ollama" / "render.go"
# Templates with fixed turns, which must get a Modelfile (a regression in the splitting shows).
WRITTEN = {"chatml", "smollm2", "qwen2.5", "qwen3", "llama3", "llama3.2", "phi3.5", "phi4",
           "internlm2", "baichuan2", "default"}


@pytest.fixture(scope="module", params=["qwen2", "llama2"])  # llama2 adds a BOS
def tokenizer(request):
    return AutoTokenizer.from_pretrained(TOKENIZERS / request.param)


def prompts() -> list[list[dict]]:
    """Every conversation prefix that ends in a user turn: what Ollama prompts with."""
    found = []
    for messages in [*CONVERSATIONS.values(), LLAMA_CPP_CONVERSATION]:
        for end, message in enumerate(messages, 1):
            if message["role"] == "user":
                found.append(messages[:end])
    return found


def as_ollama_sends(messages: list[dict], system: str | None) -> list[dict]:
    """Ollama adds the Modelfile's SYSTEM as a system message when there is none."""
    if system is None or messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system}, *messages]


def parse(text: str) -> tuple[str, str | None, list[str], str]:
    """TEMPLATE, SYSTEM, the stop words and FROM of a Modelfile as we write it."""
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    system = text.split('SYSTEM """', 1)[1].split('"""', 1)[0] if 'SYSTEM """' in text else None
    stops = [json.loads(line.removeprefix("PARAMETER stop "))
             for line in text.splitlines() if line.startswith("PARAMETER stop ")]
    return template, system, stops, text.splitlines()[0]


def written_modelfiles(tokenizer) -> dict[str, tuple[Template, str]]:
    written, refused = {}, {}
    for name in sorted(REGISTRY.entries["templates"]):
        template = Template.for_tokenizer(REGISTRY.get("templates", name), tokenizer)
        try:
            written[name] = template, modelfile("model.gguf", template, tokenizer)
        except SdkError as error:
            refused[name] = str(error)
    assert WRITTEN <= set(written), refused
    assert all(reason.startswith("--ollama: ") for reason in refused.values())
    return written


def test_the_template_prompts_every_conversation_as_the_sdk_template(tokenizer):
    bos = tokenizer.bos_token if tokenizer("Hi").input_ids[:1] == [tokenizer.bos_token_id] \
        else None
    for name, (template, text) in written_modelfiles(tokenizer).items():
        source, system, stops, origin = parse(text)
        assert origin == "FROM ./model.gguf"
        assert set(template.stop_words()) <= set(stops)
        assert system == split_turns(template, bos).default_system
        for messages in prompts():
            if trims_contents(template):  # said at export: Ollama sends them untrimmed
                messages = [{**m, "content": m["content"].strip()} for m in messages]
            try:
                expected = template.render(messages, True)
            except ValueError:  # a conversation this template does not take
                continue
            if bos:  # llama.cpp adds it to the prompt itself
                expected = expected.removeprefix(bos)
            assert render_go(source, as_ollama_sends(messages, system)) == expected, name


def test_llama2_whose_system_sits_in_the_first_user_turn_is_refused():
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "llama2")
    template = Template.for_tokenizer(REGISTRY.get("templates", "llama2"), tokenizer)
    with pytest.raises(SdkError, match="does not write each message between fixed texts"):
        modelfile("model.gguf", template, tokenizer)


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (apt-get install "
                    "golang-go) to run its text/template")
def test_gos_own_text_template_renders_what_our_interpreter_renders(tokenizer, tmp_path):
    """The interpreter in sdk.ollama against the reference: Go's text/template, which Ollama
    executes TEMPLATE with, on every written template and conversation (one Go process)."""
    cases = [{"template": parse(text)[0], "messages": as_ollama_sends(messages, parse(text)[1])}
             for _, text in written_modelfiles(tokenizer).values() for messages in prompts()]
    environment = {**os.environ, "GOCACHE": str(tmp_path / "go-cache"), "HOME": str(tmp_path)}
    result = subprocess.run(["go", "run", str(RENDER_GO)], input=json.dumps(cases), text=True,
                            capture_output=True, timeout=600, env=environment)
    assert result.returncode == 0, result.stderr
    rendered = result.stdout.split("\x00")[:-1]
    assert len(rendered) == len(cases)
    for case, by_go in zip(cases, rendered, strict=True):
        assert render_go(case["template"], case["messages"]) == by_go
