"""chatglm2-6b(-32k) and chatglm3-6b(-32k) run as transformers' Glm, converted on load from the
official checkpoint, and equal the official code (official_chatglm.py, patched only to run
under transformers 5): tokenizer ids, the official chat formats' ids, fp32 logits, greedy
generations; then `sdk sft` / `sdk infer` / `sdk export` / `sdk push` as a user runs them."""

from __future__ import annotations

import json

import pytest
import torch
from official_chatglm import (
    TINY,
    chatglm2_ids,
    chatglm3_ids,
    official_model,
    official_tokenizer,
    tiny_official_checkpoint,
)
from sft_plugin_chatglm import CONVERTED_MODELS, native

from conftest import (
    CONVERSATIONS,
    LLAMA_CPP_CONVERSATION,
    REMOTE_CODE,
    TOKENIZER_CORPUS,
    load_converted,
)
from sdk.config import InferArguments
from sdk.errors import SdkError
from sdk.models.native import native_folder
from sdk.plugins import load_plugins
from sdk.templates.engine import Template

REGISTRY = load_plugins().registry
# model type -> (official folder, weight file, official config keys of the release). The 32K
# releases' rope_ratio and seq_length are their config.json's.
VARIANTS = {
    "chatglm2-6b": ("chatglm2-6b", "pytorch_model.bin", {}),
    "chatglm3-6b": ("chatglm3-6b", "model.safetensors", {}),
    "chatglm2-6b-32k": ("chatglm2-6b", "pytorch_model.bin", {"rope_ratio": 16}),
    "chatglm3-6b-32k": ("chatglm3-6b", "model.safetensors",
                        {"rope_ratio": 50, "seq_length": 32768}),
}
CHATS = {**CONVERSATIONS, "llama.cpp": LLAMA_CPP_CONVERSATION,
         "two replies": [*CONVERSATIONS["chinese"],
                         {"role": "user", "content": "举头望明月"},
                         {"role": "assistant", "content": "低头思故乡。"}]}
ROLE_IDS = dict(zip(native.ROLE_TOKENS, range(64794, 64798), strict=True))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """checkpoint(model type, **official keys): a tiny official checkpoint, made once."""
    made = {}

    def make(model_type, **settings):
        key = (model_type, *sorted(settings.items()))
        if key not in made:
            source, weights, release = VARIANTS[model_type]
            # a folder name of its own: official_module imports each folder as a package
            made[key] = tiny_official_checkpoint(source, tmp_path_factory.mktemp(model_type),
                                                 weights=weights, **release, **settings)
        return made[key]

    return make


def load(model_type, folder):
    """The model and tokenizer as `sdk sft` / `sdk infer` load them."""
    return load_converted(model_type, folder, dtype="fp32")


@pytest.fixture(scope="module")
def tokenizers(checkpoint, native_cache):
    """model type -> (converted tokenizer, official tokenizer), for chatglm2-6b / chatglm3-6b."""
    from sdk.models.loader import load_tokenizer

    pairs = {}
    for model_type in ("chatglm2-6b", "chatglm3-6b"):
        folder = checkpoint(model_type)
        tokenizer = load_tokenizer(REGISTRY.get("models", model_type), InferArguments(
            model_type=model_type, model_id_or_path=str(folder)), REGISTRY)
        pairs[model_type] = tokenizer, official_tokenizer(folder)
    return pairs


def test_chatglm2_and_3_are_converted_and_glm4_loads_zhipus_native_release():
    for model_type, (_, _, template, _) in CONVERTED_MODELS.items():
        spec = REGISTRY.get("models", model_type)
        assert not spec.requires_remote_code and spec.converted_to == "glm"
        assert spec.loader == "sft_plugin_chatglm.native:load"
        assert spec.tokenizer_loader == "sft_plugin_chatglm.native:load_tokenizer"
        assert spec.lora_target_modules == ("q_proj", "k_proj", "v_proj")
        assert spec.config_model_types == ("chatglm",)  # the user's folder is the official one
        assert native.spec_version(spec) == int(template[-1])
    for model_type in ("glm4-9b-chat", "glm4-9b-chat-hf"):
        spec = REGISTRY.get("models", model_type)
        assert not spec.requires_remote_code and spec.lora_target_modules == (
            "q_proj", "k_proj", "v_proj")
        assert spec.hub_ids == {"huggingface": "zai-org/glm-4-9b-chat-hf",
                                "modelscope": "ZhipuAI/glm-4-9b-chat-hf"}


@pytest.mark.parametrize("model_type", ["chatglm2-6b", "chatglm3-6b"])
def test_the_tokenizer_gives_the_official_ids(tokenizers, model_type):
    tokenizer, reference = tokenizers[model_type]
    assert tokenizer.is_fast and len(tokenizer) == reference.vocab_size  # 64,794 / 64,798
    # "sop" and "eop" are special tokens only as whole words, as in [gMASK]sop
    for text in [*TOKENIZER_CORPUS, "Aesop, isopropyl, eopsin", "答： 疑是地上霜。"]:
        for special in (True, False):  # with and without the [gMASK] sop prefix
            ids = reference(text, add_special_tokens=special)["input_ids"]
            assert tokenizer(text, add_special_tokens=special)["input_ids"] == ids, text
        assert tokenizer.decode(ids) == reference.decode(ids)
    assert tokenizer("a", "b")["input_ids"] == reference("a", "b")["input_ids"]  # [...] b </s>
    # every special token at SPTokenizer's id (ChatGLM2's decodes them to "", ChatGLM3's and
    # this one to their text)
    for token in native.special_tokens(native.spec_version(REGISTRY.get("models", model_type))):
        token_id = reference.get_command(token)
        assert tokenizer.convert_tokens_to_ids(token) == token_id, token
        assert tokenizer.decode([token_id], skip_special_tokens=True) == ""
        assert tokenizer.decode([token_id]) == token
        assert reference.decode([token_id]) == (token if model_type == "chatglm3-6b" else "")
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (2, 0, 0)
    if model_type == "chatglm3-6b":
        # role tokens in text, as with the encode_special_tokens its chat template needs
        reference.encode_special_tokens = True
        text = "<|system|>\n sys<|user|>\n Hi<|assistant|>\n Hello!<|observation|>"
        assert tokenizer(text)["input_ids"] == reference(text)["input_ids"]
        reference.encode_special_tokens = False


@pytest.mark.parametrize("name", sorted(CHATS))
def test_chatglm2_ids_are_build_prompt_and_the_official_fine_tuning(tokenizers, name):
    """A prompt is tokenizer(build_prompt(query, history)) as chat() builds it; a conversation
    with a reply is what ChatGLM2-6B ptuning/main.py trains: the prompt, the answer encoded on
    its own and the eos."""
    tokenizer, reference = tokenizers["chatglm2-6b"]
    template = Template.for_tokenizer(REGISTRY.get("templates", "chatglm2"), tokenizer)
    messages = CHATS[name]
    if messages[-1]["role"] == "assistant":
        expected_ids, expected_labels = chatglm2_ids(reference, messages)
        input_ids, labels = template.encode(tokenizer, messages, loss_scope="last")
        assert input_ids == expected_ids
        # The labels are the official ones but where the answer starts with a bare word-start
        # mark ("▁", 30910; a reply whose first character has no "▁x" piece): the sdk trains a
        # reply from its first character, and the mark stands for the " " before it.
        official = [label if label != 30910 or index != expected_labels.index(30910) else -100
                    for index, label in enumerate(expected_labels)]
        assert labels == official
        messages = messages[:-1]
    prompt = template.tokenize_prompt(tokenizer, messages)["input_ids"][0].tolist()
    assert prompt == chatglm2_ids(reference, messages)[0]


@pytest.mark.parametrize("name", sorted(CHATS))
def test_chatglm3_ids_are_build_chat_input_and_build_single_message(tokenizers, name):
    tokenizer, reference = tokenizers["chatglm3-6b"]
    template = Template.for_tokenizer(REGISTRY.get("templates", "chatglm3"), tokenizer)
    messages = CHATS[name]
    if messages[-1]["role"] == "assistant":
        input_ids, labels = template.encode(tokenizer, messages)
        assert input_ids == chatglm3_ids(reference, messages)
        assert labels[-1] == ROLE_IDS["<|user|>"]  # the end-of-turn marker is trained
        messages = messages[:-1]
    prompt = template.tokenize_prompt(tokenizer, messages)["input_ids"][0].tolist()
    assert prompt == chatglm3_ids(reference, messages)


LOGIT_CASES = {
    **{model_type: (model_type, {}) for model_type in VARIANTS},
    # no multi-query groups: query_key_value holds [q | k | v] per head (never released)
    "chatglm3-6b without multi-query": ("chatglm3-6b", {"multi_query_attention": False}),
}


@pytest.mark.parametrize("case", sorted(LOGIT_CASES))
def test_fp32_logits_and_greedy_generation_equal_the_official_code(checkpoint, native_cache, case):
    model_type, settings = LOGIT_CASES[case]
    folder = checkpoint(model_type, **settings)
    model, tokenizer = load(model_type, folder)
    reference = official_model(folder)
    assert type(model).__name__ == "GlmForCausalLM"
    spec = REGISTRY.get("models", model_type)
    template = Template.for_tokenizer(REGISTRY.get("templates", spec.template), tokenizer)
    prompt = template.tokenize_prompt(tokenizer, CHATS["llama.cpp"])["input_ids"]
    assert prompt.shape[1] >= 30
    with torch.no_grad():
        torch.testing.assert_close(model(prompt).logits, reference(prompt).logits,
                                   rtol=0, atol=1e-5)
        expected = reference.generate(prompt, max_new_tokens=8, do_sample=False)
        generated = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                                   max_new_tokens=8, do_sample=False)
    assert generated.shape[1] == prompt.shape[1] + 8
    assert generated.tolist() == expected.tolist()


def test_the_rotary_embedding_is_glms_with_each_releases_rope_ratio(checkpoint, native_cache):
    """ChatGLM3's rope_ratio multiplies the base; ChatGLM2-32K's divides the positions
    (linear scaling). The official inv_freq buffer, only read for its dtype, is Glm's."""
    rope = {}
    for model_type in VARIANTS:
        folder = native_folder(checkpoint(model_type), native.conversion(
            native.spec_version(REGISTRY.get("models", model_type))))
        config = json.loads((folder / "config.json").read_text())
        rope[model_type] = config["rope_parameters"]
        assert config["max_position_embeddings"] == (8192 if model_type == "chatglm3-6b"
                                                     else 32768)
    default = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}
    assert rope == {"chatglm2-6b": default, "chatglm3-6b": default,
                    "chatglm3-6b-32k": {**default, "rope_theta": 500000.0},
                    "chatglm2-6b-32k": {**default, "rope_type": "linear", "factor": 16.0,
                                        "original_max_position_embeddings": 2048}}
    model, _ = load("chatglm3-6b", checkpoint("chatglm3-6b"))
    official = official_model(checkpoint("chatglm3-6b")).transformer.rotary_pos_emb.inv_freq
    # stored in float16, as the official checkpoints store it
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, official, rtol=1e-3, atol=0)


def test_the_converted_folder_is_plain_glm_in_the_stored_dtype(checkpoint, native_cache):
    from safetensors.torch import load_file

    official = checkpoint("chatglm3-6b")
    folder = native_folder(official, native.conversion(3))
    assert not any(p.suffix in (".py", ".bin") or p.name == "tokenizer.model"
                   for p in folder.iterdir())  # no remote code, no SentencePiece file
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "glm" and "auto_map" not in config
    assert (config["head_dim"], config["num_key_value_heads"]) == (16, 2)
    generation = json.loads((folder / "generation_config.json").read_text())
    assert generation == {"eos_token_id": [2, 64795, 64797], "pad_token_id": 0}
    weights, fused = load_file(folder / "model.safetensors"), load_file(
        official / "model.safetensors")
    assert "transformer.rotary_pos_emb.inv_freq" in fused
    assert len(weights) == len(fused) - 1 + 2 * 2 * TINY["num_layers"]  # inv_freq out; q/k/v
    assert {tensor.dtype for tensor in weights.values()} == {torch.float16}
    qkv = [fused[f"transformer.encoder.layers.1.self_attention.query_key_value.{kind}"]
           for kind in ("weight", "bias")]
    for part, rows in (("q", slice(0, 64)), ("k", slice(64, 96)), ("v", slice(96, 128))):
        assert torch.equal(weights[f"model.layers.1.self_attn.{part}_proj.weight"], qkv[0][rows])
        assert torch.equal(weights[f"model.layers.1.self_attn.{part}_proj.bias"], qkv[1][rows])


def test_an_unknown_weight_is_refused():
    with pytest.raises(SdkError, match="Unexpected weight transformer.prefix_encoder"):
        native.native_tensors("transformer.prefix_encoder.embedding.weight", torch.ones(1), {})


@pytest.mark.parametrize("settings, message", [
    ({"rmsnorm": False}, "rmsnorm=False (LayerNorm instead of RMSNorm)"),
    ({"post_layer_norm": False}, "post_layer_norm=False (no final norm)"),
    ({"add_bias_linear": True}, "add_bias_linear=True"),
    ({"apply_residual_connection_post_layernorm": True}, "residuals taken after the norms"),
    ({"quantization_bit": 4}, "quantized to 4 bits by ChatGLM's own code"),
    ({"pre_seq_len": 128}, "P-Tuning v2 prefix encoder"),
    ({"padded_vocab_size": 151552}, "GLM-4 checkpoint in its remote-code layout"),
])
def test_a_checkpoint_glm_cannot_hold_is_refused_before_the_weights_are_read(
        run_cli, identity_data, tmp_path, native_cache, settings, message):
    folder = tmp_path / "model"
    folder.mkdir()
    config = json.loads((REMOTE_CODE / "chatglm3-6b" / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **settings}))
    (folder / "model.safetensors").write_bytes(b"weights are never read")
    result = run_cli("sft", "--model-type", "chatglm3-6b", "--model-id-or-path", folder,
                     "--dataset", identity_data, "--output-dir", tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert message in result.stderr


def test_a_chatglm3_folder_is_refused_as_a_chatglm2_model_type(run_cli, checkpoint,
                                                              identity_data, tmp_path):
    """ChatGLM2-32K and ChatGLM3-32K read rope_ratio differently: a folder of the other
    generation would load as a wrong model."""
    folder = checkpoint("chatglm3-6b")
    for command in ("sft", "infer"):
        result = run_cli(command, "--model-type", "chatglm2-6b-32k", "--model-id-or-path",
                         folder, *(["--dataset", identity_data, "--output-dir", tmp_path / "out"]
                                   if command == "sft" else ["--query", "hi"]))
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert (f"'{folder}' holds a ChatGLM3 checkpoint (its tokenization_chatglm.py is "
                "ChatGLM3's), but --model-type chatglm2-6b-32k is a ChatGLM2 model") in (
            result.stderr)
        assert "Use --model-type chatglm3-6b or chatglm3-6b-32k" in result.stderr


def test_glm4_9b_chat_refuses_a_remote_code_folder_naming_the_native_release(
        run_cli, identity_data, tmp_path):
    folder = tmp_path / "glm-4-9b-chat"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "chatglm", "architectures": ["ChatGLMModel"], "padded_vocab_size": 151552}))
    for command in ("sft", "infer"):
        result = run_cli(command, "--model-type", "glm4-9b-chat", "--model-id-or-path", folder,
                         *(["--dataset", identity_data, "--output-dir", tmp_path / "out"]
                           if command == "sft" else ["--query", "hi"]))
        assert result.exit_code == 1 and "Traceback" not in result.output
        assert "is in the remote-code layout (model_type chatglm)" in result.stderr
        assert "zai-org/glm-4-9b-chat-hf" in result.stderr


@pytest.mark.slow
def test_lora_train_infer_export_and_push_as_a_user(lora_round_trip, checkpoint, native_cache):
    from peft import PeftModel

    folder = checkpoint("chatglm3-6b")
    trip = lora_round_trip("chatglm3-6b", folder, conversation="with system")
    assert trip.target_modules == {"q_proj", "k_proj", "v_proj"}
    assert type(trip.merged).__name__ == "GlmForCausalLM"
    assert "converted on load by sft-sdk to transformers' own `glm` architecture" in trip.card
    # ... and, as the card says, not onto the official remote code (its q/k/v are fused)
    with pytest.raises(ValueError, match="not found in the base model"):
        PeftModel.from_pretrained(official_model(folder), str(trip.adapter))


@pytest.mark.slow
def test_full_fine_tuning_trains_reloads_and_exports(run_cli, sdk_sft, checkpoint, native_cache,
                                                     tmp_path):
    """ChatGLM2 (its [gMASK] sop prefix from the tokenizer), trained whole."""
    from transformers import AutoModelForCausalLM

    run = sdk_sft("chatglm2-6b", checkpoint("chatglm2-6b"), "full", steps=1)
    reply = run_cli("infer", "--ckpt-dir", run, "--query", "Who?", "--max-new-tokens", "4")
    assert reply.exit_code == 0, reply.output
    exported = run_cli("export", "--ckpt-dir", run, "--output-dir", tmp_path / "exported")
    assert exported.exit_code == 0, exported.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    assert type(model).__name__ == "GlmForCausalLM"
