"""baichuan2-7b-chat runs as transformers' Llama, converted on load from the official
checkpoint, and equals the official code (official_baichuan.py, patched only to run under
transformers 5): tokenizer ids, the chat format's ids, fp32 logits, greedy generations; then
`sdk sft` / `sdk infer` / `sdk export` as a user runs them. The 13B (ALiBi) and Baichuan 4-bit
model types are refused with the reason before anything loads."""

from __future__ import annotations

import json

import pytest
import torch
from official_baichuan import (
    official_chat_ids,
    official_greedy,
    official_model,
    official_tokenizer,
    tiny_official_checkpoint,
)
from sft_plugin_baichuan import native

from conftest import CONVERSATIONS, TOKENIZER_CORPUS, load_converted
from sdk.errors import SdkError
from sdk.plugins import load_plugins
from sdk.templates.engine import Template

MODEL_TYPE = "baichuan2-7b-chat"
REGISTRY = load_plugins().registry
SPEC = REGISTRY.get("models", MODEL_TYPE)
# build_chat_input reads these of the model; the values of Baichuan2-7B-Chat's files.
GENERATION = {"user_token_id": 195, "assistant_token_id": 196, "max_new_tokens": 2048}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_official_checkpoint(tmp_path_factory.mktemp("baichuan2-official"))


@pytest.fixture(scope="module")
def official(checkpoint):
    return official_model(checkpoint), official_tokenizer(checkpoint)


@pytest.fixture(scope="module")
def converted(checkpoint, native_cache):
    """The model and tokenizer as `sdk sft` / `sdk infer` load them."""
    return load_converted(MODEL_TYPE, checkpoint)


@pytest.fixture(scope="module")
def stub(checkpoint):
    """What build_chat_input reads of a model: its config and generation config."""
    from types import SimpleNamespace

    config = json.loads((checkpoint / "config.json").read_text())
    return SimpleNamespace(config=SimpleNamespace(model_max_length=config["model_max_length"]),
                           generation_config=SimpleNamespace(**GENERATION), device="cpu")


def test_the_tokenizer_gives_the_official_ids(official, converted):
    _, reference = official
    _, tokenizer = converted
    assert type(tokenizer).__name__ != "BaichuanTokenizer" and tokenizer.is_fast
    for text in TOKENIZER_CORPUS:
        assert tokenizer(text)["input_ids"] == reference.encode(text), text
    for token in ("<s>", "</s>", "<unk>", "<reserved_106>", "<reserved_107>"):
        assert tokenizer(token)["input_ids"] == reference.encode(token), token
    # The ids that generation_config.json's user_token_id / assistant_token_id name
    assert tokenizer("<reserved_106><reserved_107>")["input_ids"] == [195, 196]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == \
           (reference.bos_token_id, reference.eos_token_id, reference.pad_token_id) == (1, 2, 0)
    assert len(tokenizer) == len(reference) == 125696
    ids = reference.encode(TOKENIZER_CORPUS[11])
    assert tokenizer.decode(ids) == reference.decode(ids) == TOKENIZER_CORPUS[11]


@pytest.mark.parametrize("name", ["single turn", "with system", "multi turn", "chinese"])
def test_the_training_ids_are_the_official_chat_format(official, converted, stub, name):
    """Template engine ids == generation_utils.build_chat_input's: for a finished
    conversation followed by </s>, the token the model learns to stop with (the official
    format never writes it: chat() stops at eos); for a prompt, exactly."""
    _, reference = official
    _, tokenizer = converted
    messages = CONVERSATIONS[name]
    template = Template.for_tokenizer(REGISTRY.get("templates", SPEC.template), tokenizer)
    prompt = template.tokenize_prompt(tokenizer, messages)["input_ids"][0].tolist()
    if messages[-1]["role"] == "assistant":
        input_ids, labels = template.encode(tokenizer, messages)
        assert input_ids == official_chat_ids(stub, reference, messages) + [2]
        assert labels[-1] == 2
        # the prompt of the last reply: the conversation up to its last user turn
        messages = messages[:-1]
        prompt = template.tokenize_prompt(tokenizer, messages)["input_ids"][0].tolist()
    assert prompt == official_chat_ids(stub, reference, messages)
    assert prompt[-1] == 196


def test_fp32_logits_and_greedy_generations_equal_the_official_code(official, converted):
    reference, tokenizer = official
    model, _ = converted
    assert type(model).__name__ == "LlamaForCausalLM"
    prompt = torch.tensor([tokenizer.encode("你好, world! 床前明月光<reserved_106>Who?")
                           + [196]])
    with torch.no_grad():
        expected = reference(prompt).logits
        torch.testing.assert_close(model(prompt).logits, expected, rtol=0, atol=1e-5)
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                   max_new_tokens=8, do_sample=False, eos_token_id=None)
    assert generated[0, prompt.shape[1]:].tolist() == official_greedy(reference, prompt, 8)
    # a batch with left padding gives each row's own logits
    short = prompt[:, 4:]
    batch = torch.stack([prompt[0], torch.cat([torch.zeros(4, dtype=torch.long), short[0]])])
    mask = (torch.arange(prompt.shape[1]) >= torch.tensor([[0], [4]])).long()
    with torch.no_grad():
        padded = model(batch, attention_mask=mask).logits
    torch.testing.assert_close(padded[1, 4:], reference(short).logits[0], rtol=0, atol=1e-5)


def test_the_converted_folder_is_plain_llama_with_the_normalised_head(checkpoint, converted):
    from safetensors.torch import load_file

    from sdk.models.native import native_folder

    folder = native_folder(checkpoint, native.CONVERSION)
    assert not any(p.suffix == ".py" for p in folder.iterdir())  # no remote code travels
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert config["max_position_embeddings"] == 4096  # model_max_length, the trained window
    weights = load_file(folder / "model.safetensors")
    assert not any("rotary" in name or "W_pack" in name for name in weights)
    state = torch.load(checkpoint / "pytorch_model.bin", weights_only=True)
    pack = state["model.layers.1.self_attn.W_pack.weight"]
    for index, part in enumerate(("q_proj", "k_proj", "v_proj")):
        assert torch.equal(weights[f"model.layers.1.self_attn.{part}.weight"],
                           pack[64 * index:64 * (index + 1)])
    norms = weights["lm_head.weight"].norm(dim=-1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def test_each_weight_keeps_its_dtype_and_baichuan_7b_keeps_its_plain_head():
    pack = torch.randn(12, 4, dtype=torch.bfloat16)
    parts = native.native_tensors("model.layers.0.self_attn.W_pack.weight", pack, {})
    assert [p.dtype for _, p in parts] == [torch.bfloat16] * 3
    head = torch.randn(8, 4, dtype=torch.bfloat16)
    [(_, baichuan2)] = native.native_tensors("lm_head.weight", head, {})
    assert baichuan2.dtype == torch.bfloat16 and not torch.equal(baichuan2, head)
    # Baichuan-7B (v1, vocabulary 64,000): a plain Linear head, written as it is
    [(_, baichuan1)] = native.native_tensors("lm_head.weight", head, {"vocab_size": 64000})
    assert torch.equal(baichuan1, head)
    assert native.native_tensors("model.layers.0.self_attn.rotary_emb.inv_freq",
                                 torch.ones(2), {}) == []


@pytest.mark.parametrize("settings, message", [
    ({"model_max_length": 4096, "hidden_size": 5120}, "is a 13B model"),
    ({"max_position_embeddings": 4096, "quantization_config": {"load_in_4bit": True}},
     "--quantization-bit 4"),
])
def test_a_13b_or_4bit_baichuan_folder_is_refused_before_its_weights_are_read(
        run_cli, identity_data, tmp_path, settings, message):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "baichuan", **settings}))
    (folder / "pytorch_model.bin").write_bytes(b"weights are never read")
    result = run_cli("sft", "--model-type", MODEL_TYPE, "--model-id-or-path", folder,
                     "--dataset", identity_data, "--output-dir", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message in result.stderr
    with pytest.raises(SdkError, match=message):
        native.native_config(json.loads((folder / "config.json").read_text()))


@pytest.mark.parametrize("model_type, reason", [
    ("baichuan-13b-chat", "ALiBi"), ("baichuan2-13b-chat", "ALiBi"),
    ("baichuan2-13b-chat-int4", "ALiBi"),
    ("baichuan2-7b-chat-int4", "Use baichuan2-7b-chat with --quantization-bit 4"),
])
def test_the_other_baichuan_types_are_refused_with_the_reason(run_cli, identity_data, tmp_path,
                                                              model_type, reason):
    result = run_cli("sft", "--model-type", model_type, "--dataset", identity_data,
                     "--output-dir", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Model type '{model_type}' cannot run here: " in result.stderr
    assert reason in result.stderr and "baichuan2-7b-chat" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_lora_train_infer_export_and_push_as_a_user(lora_round_trip, checkpoint, native_cache):
    trip = lora_round_trip(MODEL_TYPE, checkpoint)
    assert trip.target_modules == {"q_proj", "k_proj", "v_proj"}
    assert trip.reply.strip()
    assert type(trip.merged).__name__ == "LlamaForCausalLM"
    assert "converted on load by sft-sdk to transformers' own `llama` architecture" in trip.card
    # ... and, as the card says, not onto the official remote code (its q/k/v are W_pack)
    from peft import PeftModel

    with pytest.raises(ValueError, match="not found in the base model"):
        PeftModel.from_pretrained(official_model(checkpoint), str(trip.adapter))


@pytest.mark.slow
@pytest.mark.parametrize("sft_type", ["full", "qlora"])  # qlora: bitsandbytes' CPU backend
def test_full_and_qlora_fine_tuning_train_and_reload(run_cli, sdk_sft, checkpoint, native_cache,
                                                     sft_type):
    run = sdk_sft(MODEL_TYPE, checkpoint, sft_type, steps=1)
    reply = run_cli("infer", "--ckpt-dir", run, "--query", "Who?", "--max-new-tokens", "4")
    assert reply.exit_code == 0, reply.output
