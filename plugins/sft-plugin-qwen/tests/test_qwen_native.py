"""qwen-7b/14b/72b-chat run as transformers' Qwen2, converted on load from the official Qwen (v1)
checkpoint, and equal the official code (official_qwen.py, patched only to run under
transformers 5) within the trained window: tokenizer ids, make_context's and finetune.py's ids,
fp32 logits, greedy generations; then `sdk sft` / `sdk infer` / `sdk export` / `sdk push` as a
user runs them."""

from __future__ import annotations

import json

import pytest
import torch
from official_qwen import (
    OFFICIAL,
    TINY,
    finetune_ids,
    make_context,
    official_model,
    official_tokenizer,
    tiny_official_checkpoint,
)
from sft_plugin_qwen import QWEN_V1_CHAT, native

from conftest import CONVERSATIONS, LLAMA_CPP_CONVERSATION, TOKENIZER_CORPUS, load_converted
from sdk.errors import SdkError
from sdk.models.native import native_folder
from sdk.plugins import load_plugins
from sdk.templates.engine import Template

MODEL_TYPE = "qwen-7b-chat"
REGISTRY = load_plugins().registry
SPEC = REGISTRY.get("models", MODEL_TYPE)
DEFAULT_SYSTEM = "You are a helpful assistant."  # QWenLMHeadModel.chat's default
WINDOW = TINY["seq_length"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_official_checkpoint(tmp_path_factory.mktemp("qwen-official"))


@pytest.fixture(scope="module")
def official(checkpoint):
    return official_model(checkpoint), official_tokenizer(checkpoint)


@pytest.fixture(scope="module")
def converted(checkpoint, native_cache):
    """The model and tokenizer as `sdk sft` / `sdk infer` load them."""
    return load_converted(MODEL_TYPE, checkpoint, dtype="fp32")


def test_the_chat_models_are_converted():
    for model_type in QWEN_V1_CHAT:
        spec = REGISTRY.get("models", model_type)
        assert not spec.requires_remote_code and spec.requires == ("tiktoken",)
        assert spec.loader == "sft_plugin_qwen.native:load" and spec.converted_to == "qwen2"
        assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")
        assert spec.config_model_types == ("qwen",)  # the user's folder is the official one


def test_the_tokenizer_gives_the_official_ids(official, converted):
    _, reference = official
    _, tokenizer = converted
    assert tokenizer.is_fast and len(tokenizer) == len(reference) == 151851
    chat = "<|im_start|>system\n你好<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n"
    for text in [*TOKENIZER_CORPUS, chat, "cafe\u0301 (NFC)"]:
        assert tokenizer(text)["input_ids"] == reference.encode(text), text
        assert tokenizer.decode(reference.encode(text)) == reference.decode(
            reference.encode(text))
    # each of the 208 special tokens at its id, alone and in text
    for token_id, token in enumerate(native.SPECIAL_TOKENS, start=native.SPECIAL_START_ID):
        assert tokenizer(token)["input_ids"] == reference.encode(token) == [token_id], token
        assert tokenizer(f"a{token}b")["input_ids"] == reference.encode(f"a{token}b")
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|im_end|>", "<|endoftext|>", None)
    ids = reference.encode(chat)
    assert tokenizer.decode(ids, skip_special_tokens=True) == reference.decode(
        ids, skip_special_tokens=True)


def prompt_and_history(messages):
    """make_context's arguments for a conversation that ends with a user turn."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else DEFAULT_SYSTEM
    turns = [m["content"] for m in messages if m["role"] != "system"]
    return turns[-1], list(zip(turns[:-1:2], turns[1:-1:2], strict=True)), system


@pytest.mark.parametrize("name", [*CONVERSATIONS, "llama.cpp"])
def test_the_ids_are_make_context_and_finetune_py(official, converted, name):
    """A prompt gives qwen_generation_utils.make_context's context_tokens (chat_format
    chatml, as chat() calls it); a conversation with a reply gives finetune.py's ids."""
    _, reference = official
    _, tokenizer = converted
    messages = LLAMA_CPP_CONVERSATION if name == "llama.cpp" else CONVERSATIONS[name]
    template = Template.for_tokenizer(REGISTRY.get("templates", SPEC.template), tokenizer)
    if messages[-1]["role"] == "assistant":
        input_ids, labels = template.encode(tokenizer, messages)
        assert input_ids == finetune_ids(reference, messages)
        assert labels[-2:] == [native.IM_END_ID, -100]  # the reply ends with <|im_end|>, trained
        messages = messages[:-1]
    prompt = template.tokenize_prompt(tokenizer, messages)["input_ids"][0].tolist()
    assert prompt == make_context(reference, *prompt_and_history(messages))[1]


def window_prompt(tokenizer, length):
    text = "".join(TOKENIZER_CORPUS) * 4
    ids = tokenizer(text)["input_ids"][:length]
    assert len(ids) == length
    return torch.tensor([ids])


def test_fp32_logits_equal_the_official_code_up_to_the_windows_end(official, converted):
    reference, _ = official
    model, tokenizer = converted
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.max_position_embeddings == WINDOW
    for length in (5, WINDOW - 4, WINDOW):
        prompt = window_prompt(tokenizer, length)
        with torch.no_grad():
            torch.testing.assert_close(model(prompt).logits, reference(prompt).logits,
                                       rtol=0, atol=1e-5)


def test_past_the_window_only_dynamic_ntk_and_log_n_differ(official, converted):
    """Why the native window is seq_length: past it the official model, when not training,
    raises the rotary base (dynamic NTK) and scales queries by log-n, which Qwen2 cannot;
    in training mode (neither applies) it still equals Qwen2."""
    reference, _ = official
    model, tokenizer = converted
    prompt = window_prompt(tokenizer, WINDOW + 16)
    with torch.no_grad():
        native_logits = model(prompt).logits
        assert not torch.allclose(native_logits, reference(prompt).logits, atol=1e-2)
        reference.train()  # dropout probabilities are 0
        try:
            torch.testing.assert_close(native_logits, reference(prompt).logits, rtol=0,
                                       atol=1e-5)
        finally:
            reference.eval()


def test_greedy_generation_equals_the_official_code(official, converted):
    reference, _ = official
    model, tokenizer = converted
    template = Template.for_tokenizer(REGISTRY.get("templates", SPEC.template), tokenizer)
    prompt = template.tokenize_prompt(tokenizer, CONVERSATIONS["with system"])["input_ids"]
    with torch.no_grad():
        expected = reference.generate(prompt, max_new_tokens=8, do_sample=False)
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                   max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt.shape[1] + 8
    assert generated.tolist() == expected.tolist()


def test_the_converted_folder_is_plain_qwen2(checkpoint, converted):
    from safetensors.torch import load_file

    folder = native_folder(checkpoint, native.QWEN_V1_TO_QWEN2)
    assert not any(p.suffix in (".py", ".tiktoken") for p in folder.iterdir())  # no remote code
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "qwen2" and "auto_map" not in config
    assert config["intermediate_size"] == TINY["intermediate_size"] // 2
    assert "pad_token_id" not in config  # Qwen2 would make it the embedding's padding_idx
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [151645, 151643] and generation["pad_token_id"] == 151643
    weights = load_file(folder / "model.safetensors")
    official = load_file(checkpoint / "model.safetensors")
    assert len(weights) == len(official) + 2 * TINY["num_hidden_layers"] * 2  # q/k/v from c_attn
    fused = [official[f"transformer.h.1.attn.c_attn.{kind}"] for kind in ("weight", "bias")]
    for index, part in enumerate(("q_proj", "k_proj", "v_proj")):
        rows = slice(64 * index, 64 * (index + 1))
        assert torch.equal(weights[f"model.layers.1.self_attn.{part}.weight"], fused[0][rows])
        assert torch.equal(weights[f"model.layers.1.self_attn.{part}.bias"], fused[1][rows])
    assert torch.equal(weights["model.layers.0.mlp.up_proj.weight"],
                       official["transformer.h.0.mlp.w1.weight"])
    assert torch.equal(weights["model.layers.0.mlp.gate_proj.weight"],
                       official["transformer.h.0.mlp.w2.weight"])


def test_the_config_reads_qwen_7b_chats_keys():
    official = json.loads((OFFICIAL / "config.json").read_text())
    config = native.qwen2_config(official)
    assert {key: config[key] for key in (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
        "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "vocab_size",
        "tie_word_embeddings", "eos_token_id")} == {
        "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 8192,  # seq_length; not max_position_embeddings (32768)
        "rms_norm_eps": 1e-6, "vocab_size": 151936, "tie_word_embeddings": False,
        "eos_token_id": 151645}
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert "dtype" not in config  # no precision flag set: picked at run time (--dtype auto)
    for flag, dtype in (("bf16", "bfloat16"), ("fp16", "float16"), ("fp32", "float32")):
        assert native.qwen2_config({**official, flag: True})["dtype"] == dtype
    # Qwen-72B-Chat's rotary base and window
    assert native.qwen2_config({**official, "rotary_emb_base": 1000000, "seq_length": 32768})[
        "rope_parameters"]["rope_theta"] == 1e6


def test_each_weight_keeps_its_dtype_and_buffers_are_dropped():
    fused = torch.randn(12, 4, dtype=torch.bfloat16)
    parts = native.qwen2_tensors("transformer.h.3.attn.c_attn.weight", fused, {})
    assert [name for name, _ in parts] == [f"model.layers.3.self_attn.{p}_proj.weight"
                                           for p in "qkv"]
    assert [p.dtype for _, p in parts] == [torch.bfloat16] * 3
    for buffer in ("transformer.rotary_emb.inv_freq", "transformer.h.0.attn.rotary_emb.inv_freq",
                   "transformer.h.0.attn.masked_bias"):
        assert native.qwen2_tensors(buffer, torch.ones(2), {}) == []
    with pytest.raises(SdkError, match="no weight of Qwen"):
        native.qwen2_tensors("transformer.h.0.attn.W_pack.weight", fused, {})


@pytest.mark.parametrize("settings, message", [
    ({"rotary_pct": 0.5}, "rotary_pct 0.5"),
    ({"kv_channels": 32}, "kv_channels 32 x 4 heads is not hidden_size 64"),
    ({"seq_length": None}, "no seq_length"),
    ({"hidden_size": None, "n_embd": 64}, "first Qwen release's names"),
])
def test_a_config_qwen2_cannot_hold_is_refused_before_the_weights_are_read(
        run_cli, identity_data, tmp_path, native_cache, settings, message):
    folder = tmp_path / "model"
    folder.mkdir()
    config = {"model_type": "qwen", **TINY, **settings}
    config = {key: value for key, value in config.items() if value is not None}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"weights are never read")
    result = run_cli("sft", "--model-type", MODEL_TYPE, "--model-id-or-path", folder,
                     "--dataset", identity_data, "--output-dir", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message in result.stderr
    with pytest.raises(SdkError, match=message):
        native.qwen2_config(config)


@pytest.mark.slow
def test_lora_train_infer_export_and_push_as_a_user(lora_round_trip, checkpoint, native_cache):
    # merging rounds W + BA once in fp32; these logits reach about 10 in magnitude
    trip = lora_round_trip(MODEL_TYPE, checkpoint, rtol=0, atol=1e-4)
    assert trip.target_modules == {"q_proj", "k_proj", "v_proj"}
    assert type(trip.merged).__name__ == "Qwen2ForCausalLM"
    # Pushed, the card says what the adapter applies to (the round trip rebuilt it from the
    # download on the official checkpoint, answering as from the run) ...
    assert "converted on load by sft-sdk to transformers' own `qwen2` architecture" in trip.card
    # ... and, as the card says, not onto the official remote code (its q/k/v are c_attn)
    from peft import PeftModel

    with pytest.raises(ValueError, match="not found in the base model"):
        PeftModel.from_pretrained(official_model(checkpoint), str(trip.adapter))


@pytest.mark.slow
def test_full_fine_tuning_trains_and_reloads(run_cli, sdk_sft, checkpoint, native_cache):
    run = sdk_sft(MODEL_TYPE, checkpoint, "full", steps=1)
    reply = run_cli("infer", "--ckpt-dir", run, "--query", "Who?", "--max-new-tokens", "4")
    assert reply.exit_code == 0, reply.output
