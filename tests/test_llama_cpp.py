"""`sdk export --to gguf` run through llama.cpp itself (llama-cpp-python), the program the files
are for. Opt-in: llama-cpp-python compiles llama.cpp on install (about 20 minutes on 2 cores),
so `make install` leaves it out and these tests skip without it; `make test-llama-cpp` builds
it and runs them."""

import pytest
import torch
from test_export_gguf import ARCHITECTURES, logits, self_cognition_to_gguf, tiny_model

from conftest import CONVERSATIONS, TOKENIZER_CORPUS, TOKENIZERS
from sdk.config import ExportArguments
from sdk.export import save_gguf
from sdk.templates.builtin import CHATML
from sdk.templates.engine import Template

llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp is opt-in: make test-llama-cpp")


def load(path, context: int = 512):
    return llama_cpp.Llama(model_path=str(path), n_ctx=context, logits_all=True, verbose=False,
                           n_threads=1)


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_llama_cpp_gives_each_architecture_the_same_logits_and_ids(architecture, tmp_path):
    """The f16 file in llama.cpp: the fp32 model's logits within f16 weights' tolerance (the
    same bound transformers' reader is held to), and the tokenizer's own ids. The whole
    vocabulary: llama.cpp's SentencePiece merges start from pieces a cut vocabulary lacks."""
    model, tokenizer = tiny_model(architecture, tmp_path, full_vocabulary=True)
    template = Template.for_tokenizer(CHATML, tokenizer)
    path = save_gguf(tmp_path, model, tokenizer, template,
                     ExportArguments(to="gguf", gguf_type="f16"), "tiny")
    llm = load(path)
    ids = tokenizer(TOKENIZER_CORPUS[1] + TOKENIZER_CORPUS[12]).input_ids
    llm.eval(ids)
    computed = torch.tensor(llm.scores[:len(ids)], dtype=torch.float32)
    expected = logits(model, torch.tensor([ids]))[0]
    torch.testing.assert_close(computed, expected, rtol=1.6e-2,
                               atol=2e-2 * expected.abs().max().item())
    reference = official_ids(architecture, tokenizer)
    for text in TOKENIZER_CORPUS:
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == reference(text), text
    for messages in CONVERSATIONS.values():
        rendered = template.render(messages, True)
        assert llm.tokenize(rendered.encode(), add_bos=False, special=True) == \
            reference(rendered)


def official_ids(architecture: str, tokenizer):
    """Text -> ids by the official tokenizer: SentencePiece's own for a tokenizer.model (the
    tokenizer.json conversion of Mistral's differs from it on runs of spaces, and llama.cpp
    follows SentencePiece), else the tokenizer.json."""
    _, name, _ = ARCHITECTURES[architecture]
    model = TOKENIZERS / name / "tokenizer.model"
    if model.exists():
        import sentencepiece

        return sentencepiece.SentencePieceProcessor(model_file=str(model)).encode
    return lambda text: tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.slow
def test_the_self_cognition_demo_answers_with_its_new_name_in_llama_cpp(run_cli, tmp_path):
    """The README's round trip: the demo's LoRA run on the embedded SmolLM2, exported to q8_0,
    asked "Who are you?" by llama.cpp through the chat template inside the file."""
    import time

    started = time.perf_counter()
    _, path, trained_at = self_cognition_to_gguf(run_cli, tmp_path)
    written_at = time.perf_counter()
    llm = load(path, context=1024)
    answer = llm.create_chat_completion([{"role": "user", "content": "Who are you?"}],
                                        max_tokens=30, temperature=0)
    reply = answer["choices"][0]["message"]["content"]
    print(f"sft {trained_at - started:.0f} s, export {written_at - trained_at:.0f} s, "
          f"llama.cpp load and answer {time.perf_counter() - written_at:.0f} s: {reply!r}")
    assert "Ferret" in reply
