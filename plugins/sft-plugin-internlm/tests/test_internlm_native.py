"""InternLM v1 and InternLM2/2.5 run as transformers' Llama, converted on load from their
official checkpoints, and equal the official code (official_internlm.py, patched only to run
under transformers 5): tokenizer ids, the chat formats' ids, fp32 logits (with InternLM2's
"linear" and "dynamic" rope scaling, within and past the trained window) and greedy
generations; then `sdk sft` / `sdk infer` / `sdk export` as a user runs them."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from official_internlm import (
    V1,
    V2,
    build_inputs,
    internlm_chat_7b_prompt,
    official_class,
    official_model,
    official_tokenizer,
    tiny_official_checkpoint,
)
from sft_plugin_internlm import INTERNLM_SYSTEM, native

from conftest import CONVERSATIONS, TOKENIZER_CORPUS, load_converted
from sdk.errors import SdkError
from sdk.models.native import native_folder
from sdk.plugins import load_plugins
from sdk.templates.engine import Template
from sdk.testing import trained_spans

REGISTRY = load_plugins().registry
# checkpoint name: (official folder, model type, config.json settings over the tiny sizes)
CHECKPOINTS = {
    "v1": (V1, "internlm-chat-7b", {}),
    "v2": (V2, "internlm2-chat-7b", {}),  # "rope_scaling": null
    # internlm2.5-7b-chat ships {"type": "dynamic", "factor": 2.0}
    "v2-dynamic": (V2, "internlm2.5-7b-chat", {"rope_scaling": {"type": "dynamic",
                                                                "factor": 2.0}}),
    # no released model has it; the official code runs it. Converted as the v2 checkpoint
    # (same weights and tokenizer) with this config (see `converted`).
    "v2-linear": (V2, "internlm2-chat-20b", {"rope_scaling": {"type": "linear", "factor": 2.0}}),
}
WINDOW = 32  # the tiny InternLM2 checkpoints' max_position_embeddings
END = {"v1": "<eoa>", "v2": "<|im_end|>"}
CHATS = {name: CONVERSATIONS[name] for name in ("single turn", "with system", "multi turn",
                                                "multi turn with system", "chinese")}
CHATS["empty system"] = [{"role": "system", "content": ""}, {"role": "user", "content": "x"}]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {name: tiny_official_checkpoint(source, tmp_path_factory.mktemp(name), **settings)
            for name, (source, _, settings) in CHECKPOINTS.items()}


@pytest.fixture(scope="module")
def converted(checkpoints, native_cache):
    """Each checkpoint's model and tokenizer as `sdk sft` / `sdk infer` load them. The linear
    one: the v2 folder's weights with the config its own config.json converts to (its
    tokenizer files are v2's; converting them again would only take time)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    loaded = {}
    for name, (_, model_type, _) in CHECKPOINTS.items():
        if name == "v2-linear":
            continue
        loaded[name] = load_converted(model_type, checkpoints[name])
    official = json.loads((checkpoints["v2-linear"] / "config.json").read_text())
    config = LlamaConfig(**native.V2.config(official))
    model = LlamaForCausalLM.from_pretrained(native_folder(checkpoints["v2"], native.V2),
                                             config=config, dtype=torch.float32)
    loaded["v2-linear"] = model.eval(), loaded["v2"][1]
    return loaded


@pytest.fixture(scope="module")
def references(checkpoints):
    return {name: official_tokenizer(checkpoints[name]) for name in ("v1", "v2")}


@pytest.mark.parametrize("name, size", [("v1", 103168), ("v2", 92544)])
def test_the_tokenizer_gives_the_official_ids(converted, references, name, size):
    _, tokenizer = converted[name]
    reference = references[name]
    assert tokenizer.is_fast and len(tokenizer) == len(reference) == size
    for text in TOKENIZER_CORPUS:  # both add bos by default (add_bos_token)
        ids = reference(text)["input_ids"]
        assert tokenizer(text)["input_ids"] == ids, text
        assert tokenizer.decode(ids, skip_special_tokens=True) == reference.decode(
            ids, skip_special_tokens=True) == text
    for token in dict.fromkeys(["<eoh>", "<eoa>", *reference.all_special_tokens]):
        assert tokenizer(token)["input_ids"] == reference(token)["input_ids"], token
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id,
            tokenizer.unk_token_id) == (1, 2, 2, 0) == (
        reference.bos_token_id, reference.eos_token_id, reference.pad_token_id,
        reference.unk_token_id)
    if name == "v1":  # pieces of tokenizer.model; special here, so a decoded reply drops them
        assert tokenizer.convert_tokens_to_ids(["<eoh>", "<eoa>"]) == [103027, 103028]
    else:
        assert tokenizer.convert_tokens_to_ids(
            ["<|plugin|>", "<|action_start|>", "<|im_end|>", "<|im_start|>"]) == [
            92538, 92541, 92542, 92543]


def test_the_official_chat_formats_tokenize_alike(converted, references, checkpoints):
    """The prompts the official build_inputs and chat_template write, through each
    tokenizer: the same ids."""
    history = [("Hi", "Hello! 你好"), ("Tell me a joke.", "Why did the LLM cross the road?")]
    for name in ("v1", "v2"):  # v1: internlm-20b's build_inputs ("<eoh>"), see official_internlm
        _, tokenizer = converted[name]
        prompt, ids = build_inputs(checkpoints[name], references[name], "床前明月光", history)
        assert tokenizer(prompt)["input_ids"] == ids
    messages = CONVERSATIONS["multi turn with system"]
    text = references["v2"].apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=True)
    assert converted["v2"][1](text, add_special_tokens=False)["input_ids"] == references["v2"](
        text, add_special_tokens=False)["input_ids"]


def official_conversation(name, checkpoint, reference, messages, meta):
    """The official ids of ``messages``: the prompt its build_inputs writes for the last
    query (earlier turns as history), and for a finished conversation the last reply as that
    code writes a turn in its history ("{reply}<eoa>\\n", "{reply}<|im_end|>\\n")."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else meta
    turns = [m["content"] for m in messages if m["role"] != "system"]
    reply = turns.pop() if messages[-1]["role"] == "assistant" else None
    query, history = turns[-1], list(zip(turns[:-2:2], turns[1:-1:2], strict=True))
    if name == "v1":  # internlm-chat-7b's own format, not the 20B file's
        prompt = internlm_chat_7b_prompt(query, history, system)
    else:
        prompt, _ = build_inputs(checkpoint, reference, query, history, system)
    if reply is not None:
        prompt += f"{reply}{END[name]}\n"
    return reference(prompt)["input_ids"]


CHAT_DEFAULT = inspect.signature(official_class(V2).chat).parameters["meta_instruction"].default


FORMATS = {
    "v1": ("internlm", INTERNLM_SYSTEM),  # internlm-chat-7b's chat() adds it
    "v2": ("internlm2", ""),  # the official chat_template: no system turn of its own
    "v2 chat()": ("internlm2-chat", CHAT_DEFAULT),  # model.chat()'s meta instruction
}


# InternLM2's build_inputs writes no system turn for an empty meta instruction, where the
# chat_template (which the internlm2 templates follow) keeps an empty one: compared above.
@pytest.mark.parametrize("form, chat", [(form, chat) for form in FORMATS for chat in CHATS
                                        if form == "v1" or chat != "empty system"])
def test_the_training_ids_are_the_official_chat_format(converted, references, checkpoints, form,
                                                      chat):
    name = form.split()[0]
    template, meta = FORMATS[form]
    _, tokenizer = converted[name]
    engine = Template.for_tokenizer(REGISTRY.get("templates", template), tokenizer)
    messages = CHATS[chat]
    expected = official_conversation(name, checkpoints[name], references[name], messages, meta)
    if messages[-1]["role"] == "assistant":
        input_ids, labels = engine.encode(tokenizer, messages)
        assert input_ids == expected
        # each reply and its end marker are trained, then the newline is not
        replies = [m["content"] + END[name] for m in messages if m["role"] == "assistant"]
        assert trained_spans(tokenizer, input_ids, labels) == replies
        messages = messages[:-1]
        expected = official_conversation(name, checkpoints[name], references[name], messages,
                                         meta)
    assert engine.tokenize_prompt(tokenizer, messages)["input_ids"][0].tolist() == expected


@pytest.mark.parametrize("chat", CHATS)
@pytest.mark.parametrize("generation_prompt", [False, True])
def test_sdk_template_render_is_the_official_chat_template(render_cli, references, chat,
                                                           generation_prompt):
    expected = references["v2"].apply_chat_template(
        CHATS[chat], tokenize=False, add_generation_prompt=generation_prompt)
    for model_type in ("internlm2-chat-7b", "internlm2-chat-20b", "internlm2.5-7b-chat"):
        assert render_cli(model_type, CHATS[chat], generation_prompt) == expected
    assert CHAT_DEFAULT == INTERNLM_SYSTEM  # what --template internlm2-chat adds


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_fp32_logits_and_greedy_generations_equal_the_official_code(checkpoints, converted,
                                                                    name):
    """Greedy generation and a prompt within the trained window, then an input past it
    (rope scaling's own range: dynamic NTK starts there). In that order: the official rope
    caches keep the longest input they saw (see native.v2_rope)."""
    model, tokenizer = converted[name]
    reference = official_model(checkpoints[name])
    prompt = tokenizer("<|User|>:你好, world! 床前明月光\n<|Bot|>:", return_tensors="pt")[
        "input_ids"]
    long = torch.randint(3, 90000, (1, 2 * WINDOW), generator=torch.Generator().manual_seed(0))
    options = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=8, do_sample=False,
                   eos_token_id=None)
    with torch.no_grad():
        generated = model.generate(prompt, **options)
        assert generated.tolist() == reference.generate(prompt, **options).tolist()
        for ids in (prompt, long):
            torch.testing.assert_close(model(ids).logits, reference(ids).logits, rtol=0,
                                       atol=1e-5)
        if name in ("v2-dynamic", "v2-linear"):  # same weights as v2: the scaling shows
            unscaled = converted["v2"][0](long).logits
            assert (unscaled - model(long).logits).abs().max() > 1e-4  # 10x the tolerance


def test_the_converted_folders_are_plain_llama(checkpoints, native_cache):
    from safetensors.torch import load_file

    v2 = native_folder(checkpoints["v2"], native.V2)
    assert not any(file.suffix == ".py" for file in v2.iterdir())  # no remote code travels
    config = json.loads((v2 / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert (config["num_key_value_heads"], config["attention_bias"]) == (2, False)
    weights = load_file(v2 / "model.safetensors")
    assert not any("rotary" in name or "wqkv" in name for name in weights)
    wqkv = load_file(checkpoints["v2"] / "model.safetensors")[
        "model.layers.1.attention.wqkv.weight"]
    # 2 groups of [query head, query head, key head, value head], 16 rows each
    rows = lambda *blocks: torch.cat([wqkv[16 * b:16 * (b + 1)] for b in blocks])  # noqa: E731
    for part, blocks in (("q", (0, 1, 4, 5)), ("k", (2, 6)), ("v", (3, 7))):
        assert torch.equal(weights[f"model.layers.1.self_attn.{part}_proj.weight"], rows(*blocks))
    generation = json.loads((v2 / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, 92542]  # </s> and <|im_end|>, as chat() stops
    v1 = native_folder(checkpoints["v1"], native.V1)
    config = json.loads((v1 / "config.json").read_text())
    assert (config["attention_bias"], config["mlp_bias"]) == (True, False)
    assert config["rope_parameters"] == {"rope_type": "default", "rope_theta": 10000.0}
    assert json.loads((v1 / "generation_config.json").read_text())["eos_token_id"] == [2, 103028]
    assert not any("rotary" in name for name in load_file(v1 / "model.safetensors"))


def test_each_weight_keeps_its_dtype_and_unknown_weights_are_refused():
    config = {"hidden_size": 8, "num_attention_heads": 4, "num_key_value_heads": 2}
    wqkv = torch.randn(16, 8, dtype=torch.bfloat16)
    parts = native.v2_tensors("model.layers.0.attention.wqkv.weight", wqkv, config)
    assert [(name.split(".")[-2], p.dtype, p.shape[0]) for name, p in parts] == [
        ("q_proj", torch.bfloat16, 8), ("k_proj", torch.bfloat16, 4),
        ("v_proj", torch.bfloat16, 4)]
    assert native.v1_tensors("model.layers.0.self_attn.rotary_emb.inv_freq", wqkv, {}) == []
    for tensors in (native.v1_tensors, native.v2_tensors):
        with pytest.raises(SdkError, match="no InternLM model has"):
            tensors("transformer.h.0.attn.c_attn.weight", wqkv, config)


def test_rope_settings_are_read_as_the_official_code_reads_them():
    assert native.v2_rope({"type": "dynamic", "factor": 2.0}, 1e6) == {
        "rope_type": "dynamic", "factor": 2.0, "rope_theta": 1e6}
    for scaling in ({"type": "yarn", "factor": 2.0}, {"type": "linear", "factor": 2},
                    {"type": "dynamic", "factor": 0.5}):
        with pytest.raises(SdkError, match="is not one InternLM2 runs"):
            native.v2_rope(scaling, 1e6)
    # a later InternLM v1 revision's `rotary` dict
    assert native.v1_config({"rotary": {"base": 10000, "type": "dynamic"}})[
        "rope_parameters"] == {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 1.0}
    assert native.v1_config({"rotary": {"base": 5e5, "type": "origin"}})["rope_parameters"] == {
        "rope_type": "default", "rope_theta": 5e5}
    defaults = native.v2_config({})  # configuration_internlm2.py's defaults
    assert (defaults["num_key_value_heads"], defaults["attention_bias"],
            defaults["rope_parameters"]["rope_theta"]) == (32, True, 10000.0)


def test_a_folder_of_the_other_internlm_or_an_unknown_rope_is_refused(
        run_cli, checkpoints, identity_data, tmp_path):
    result = run_cli("sft", "--model-type", "internlm2-chat-7b", "--model-id-or-path",
                     checkpoints["v1"], "--dataset", identity_data, "--output-dir",
                     tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "holds a internlm model (InternLMForCausalLM), but --model-type internlm2-chat-7b " \
           "is a internlm2 model" in result.stderr
    folder = tmp_path / "yarn"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(
        {"model_type": "internlm2", "rope_scaling": {"type": "yarn", "factor": 4.0}}))
    (folder / "model.safetensors").write_bytes(b"weights are never read")
    result = run_cli("infer", "--model-type", "internlm2.5-7b-chat", "--model-id-or-path",
                     folder, "--query", "hi")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "rope_scaling {'type': 'yarn', 'factor': 4.0} is not one InternLM2 runs" in \
           result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_lora_train_infer_export_and_push_as_a_user(lora_round_trip, checkpoints, native_cache):
    from peft import PeftModel

    trip = lora_round_trip("internlm2.5-7b-chat", checkpoints["v2-dynamic"])
    assert trip.target_modules == {"q_proj", "k_proj", "v_proj"}
    assert type(trip.merged).__name__ == "LlamaForCausalLM"
    assert trip.merged.config.rope_parameters["rope_type"] == "dynamic"
    assert "converted on load by sft-sdk to transformers' own `llama` architecture" in trip.card
    assert "so it does not load onto the official remote code" in trip.card
    # ... and, as the card says, not onto the official remote code (its q/k/v are wqkv)
    with pytest.raises(ValueError, match="not found in the base model"):
        PeftModel.from_pretrained(official_model(checkpoints["v2-dynamic"]), str(trip.adapter))


@pytest.mark.slow
def test_an_internlm_v1_adapter_also_loads_onto_the_official_code(
        lora_round_trip, checkpoints, native_cache):
    """InternLM v1's names are Llama's, so its adapter (q/k/v_proj) applies to the official
    remote code as well, with the same logits, as its card says."""
    from peft import PeftModel

    trip = lora_round_trip("internlm-chat-7b", checkpoints["v1"])
    assert "so it also loads onto the official remote code" in trip.card
    official = PeftModel.from_pretrained(official_model(checkpoints["v1"]), trip.adapter)
    with torch.no_grad():
        torch.testing.assert_close(official(**trip.inputs).logits,
                                   trip.model(**trip.inputs).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_full_fine_tuning_trains_and_reloads(run_cli, sdk_sft, checkpoints, native_cache):
    run = sdk_sft("internlm2-chat-7b", checkpoints["v2"], "full", steps=1)
    reply = run_cli("infer", "--ckpt-dir", run, "--query", "Who?", "--max-new-tokens", "2")
    assert reply.exit_code == 0, reply.output
