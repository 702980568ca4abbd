"""Gemma plugin: the model types and templates are registered; the templates render as
transformers' apply_chat_template does with the official Gemma 2 / Gemma 3 templates
(sdk.testing's parity check; `sdk template render` refuses Gemma 2's system prompt as the official
template does) and as Gemma's documented turn format; training ids are the tokenizer's own; tiny
random Gemma 2 and Gemma 3 models (soft-capping, sliding windows shorter than a sample, tied and
scaled embeddings) pass the packing probe, train LoRA packed, reload to the same logits and export
merged; a Gemma 3 image-text checkpoint trains as its language model alone."""

import json
import logging
import math
import re

import pytest
import torch
from sft_plugin_gemma import LORA_TARGETS, MODELS, TEMPLATES

from conftest import CONVERSATIONS, TINY_SIZE, TOKENIZERS
from sdk.config import SftArguments
from sdk.plugins import load_plugins
from sdk.templates.engine import Template
from sdk.testing import (
    assert_template_parity,
    assert_trained_spans,
    export_merged,
    train_and_reload,
)
from sdk.train.packed_attention import KERNEL
from sdk.train.packing import packing_collator, why_not_packed

SPECS = {spec.name: spec for spec in TEMPLATES}
NO_SYSTEM = [name for name, messages in CONVERSATIONS.items()
             if messages[0]["role"] != "system"]
# a window shorter than the probe's and the data's samples, so that it shapes their attention
TINY_GEMMA = dict(TINY_SIZE, head_dim=8, sliding_window=6)
PAIR = [{"role": "user", "content": "Who are you?"},
        {"role": "assistant", "content": "I am Tiny, made by the tests."}]


def stand_in(**tokens):
    """Gemma's tokenizer is not redistributable: Llama 2's (sentencepiece too) with Gemma's
    turn markers as special tokens, and ``tokens`` (bos_token=...)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "llama2")
    tokenizer.add_special_tokens({**tokens, "additional_special_tokens": ["<start_of_turn>",
                                                                          "<end_of_turn>"]})
    return tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return stand_in()


@pytest.fixture(scope="module")
def gemma_tokens_tokenizer():
    """The stand-in with Gemma's own <bos> and <eos>, which the templates write."""
    return stand_in(bos_token="<bos>", eos_token="<eos>")


def test_every_model_type_is_registered_with_hub_ids_and_its_template():
    registry = load_plugins().registry
    assert set(MODELS) == {"gemma2-2b-it", "gemma2-9b-it", "gemma2-27b-it", "gemma3-1b-it",
                           "gemma3-4b-it", "gemma3-12b-it", "gemma3-27b-it"}
    for model_type in MODELS:
        spec = registry.get("models", model_type)
        size = re.search(r"-(\d+b)-it$", model_type).group(1)
        version = model_type[len("gemma"):model_type.index("-")]
        assert spec.family == "gemma" and spec.revision == "main"
        assert spec.hub_ids == {"huggingface": f"google/gemma-{version}-{size}-it",
                                "modelscope": f"LLM-Research/gemma-{version}-{size}-it"}
        assert spec.template == ("gemma" if version == "2" else "gemma3")
        assert spec.lora_target_modules == LORA_TARGETS
        assert not spec.requires_remote_code and not spec.requires
        assert (spec.loader is not None) == (version == "3")
    for name in SPECS:
        assert registry.get("templates", name) == SPECS[name]


def test_ms_swift_and_llama_factory_names_are_read_as_ours():
    from sdk.compat import resolve_names

    registry = load_plugins().registry
    for theirs, ours in [("gemma2-27b-instruct", "gemma2-27b-it"),  # ms-swift 2.x
                         ("gemma2-2b-it", "gemma2-2b-it")]:
        assert resolve_names({"model_type": theirs}, registry)["model_type"] == ours
    # LLaMA-Factory's gemma2 serves Gemma 2 and Gemma 3 1B: the model type's own template
    for theirs, ours in [("gemma", "gemma"), ("gemma3", "gemma3"), ("gemma2", None),
                         ("gemma3_text", "gemma3"), ("gemma3_vision", "gemma3")]:  # ms-swift
        assert resolve_names({"template": theirs}, registry)["template"] == ours
    for key in ("#model", "#model_name_or_path"):  # ms-swift 3.x's, LLaMA-Factory's
        for model_type in MODELS:
            hub_id = registry.get("models", model_type).hub_ids["huggingface"]
            assert resolve_names({key: hub_id}, registry)["model_type"] == model_type


@pytest.mark.parametrize("template,conversations", [("gemma", NO_SYSTEM),
                                                    ("gemma3", list(CONVERSATIONS))])
def test_render_equals_the_official_chat_template(gemma_tokens_tokenizer, template,
                                                  conversations):
    assert_template_parity(SPECS[template], gemma_tokens_tokenizer,
                           [CONVERSATIONS[name] for name in conversations],
                           chat_template=SPECS[template].jinja)


@pytest.mark.parametrize("name", [name for name in CONVERSATIONS if name not in NO_SYSTEM])
def test_gemma2_refuses_a_system_prompt_as_the_official_template_does(
        gemma_tokens_tokenizer, run_cli, tmp_path, name):
    messages = CONVERSATIONS[name]
    for generation_prompt in (False, True):
        with pytest.raises(Exception, match="System role not supported"):
            gemma_tokens_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt,
                chat_template=SPECS["gemma"].jinja)
        path = tmp_path / "system.json"
        path.write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
        refused = run_cli("template", "render", "--model-type", "gemma2-9b-it", "--messages",
                          path, *(["--add-generation-prompt"] if generation_prompt else []))
        assert refused.exit_code != 0 and "System role not supported" in refused.output
        assert "Traceback" not in refused.output


def test_the_turn_format_is_gemmas():
    """Gemma's documented format (ai.google.dev/gemma/docs/core/prompt-structure): role
    'model', texts trimmed; Gemma 3 puts the system text and a blank line in the first user
    turn; without a system message Gemma 2 and 3 render alike."""
    chat = Template(SPECS["gemma3"]).render(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi \n"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"}],
        add_generation_prompt=True)
    assert chat == ("<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
                    "<start_of_turn>model\nHello!<end_of_turn>\n"
                    "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n")
    for name in NO_SYSTEM:
        assert (Template(SPECS["gemma"]).render(CONVERSATIONS[name])
                == Template(SPECS["gemma3"]).render(CONVERSATIONS[name]))


@pytest.mark.parametrize("template,name", [("gemma", "multi turn"), ("gemma3", "chinese")])
def test_training_ids_equal_the_tokenizers_and_only_replies_train(tokenizer, template, name):
    messages = CONVERSATIONS[name]
    replies = [m["content"] + "<end_of_turn>" for m in messages if m["role"] == "assistant"]
    assert_trained_spans(SPECS[template], tokenizer, messages, replies)


def tiny_gemma(tokenizer, folder, version: str):
    """A tiny random Gemma 2 (soft-capped attention and logits) or Gemma 3 image-text model
    saved with ``tokenizer``; the model (eager attention) and its folder."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        Gemma3Config,
        Gemma3ForConditionalGeneration,
    )

    torch.manual_seed(0)
    text = dict(TINY_GEMMA, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    if version == "2":
        model = Gemma2ForCausalLM(Gemma2Config(**text, attn_implementation="eager"))
        assert model.config.attn_logit_softcapping and model.config.final_logit_softcapping
    else:
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)
        model = Gemma3ForConditionalGeneration(Gemma3Config(
            text_config=text, vision_config=vision, mm_tokens_per_image=4,
            attn_implementation="eager"))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model.eval(), folder


def test_a_gemma3_image_text_checkpoint_loads_as_its_language_model(tokenizer, tmp_path):
    """Same logits on text as the image-text model, the vision tower left unread without a
    report line per weight; saved, it is a gemma3_text folder under the text model's own
    names, which loads as it is (as Gemma 3 1B does)."""
    from sft_plugin_gemma import load_text_model

    from sdk.models.loader import LoadOptions

    spec = load_plugins().registry.get("models", "gemma3-12b-it")
    official, folder = tiny_gemma(tokenizer, tmp_path / "official", "3")
    report = logging.getLogger("transformers.modeling_utils")
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    report.addHandler(handler)
    try:
        model, _ = load_text_model(spec, LoadOptions(model_dir=str(folder)))
    finally:
        report.removeHandler(handler)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert not any("vision_tower" in record for record in records), records
    model.save_pretrained(tmp_path / "text")
    assert json.loads((tmp_path / "text" / "config.json").read_text())["model_type"] == \
        "gemma3_text"
    tokenizer.save_pretrained(tmp_path / "text")
    again, _ = load_text_model(spec, LoadOptions(model_dir=str(tmp_path / "text")))
    input_ids = torch.tensor([list(range(40, 60))])
    with torch.no_grad():
        expected = official(input_ids=input_ids).logits
        torch.testing.assert_close(model.eval()(input_ids=input_ids).logits, expected)
        torch.testing.assert_close(again.eval()(input_ids=input_ids).logits, expected)


@pytest.mark.parametrize("version", ["2", "3"])
def test_packed_samples_keep_their_logits_with_soft_caps_and_sliding_windows(tokenizer,
                                                                             tmp_path, version):
    """The packing probe passes, and a pack of samples longer than the window gives each
    sample its logits alone (Gemma 3 through its text model, as the loader builds it)."""
    model, _ = tiny_gemma(tokenizer, tmp_path, version)
    if version == "3":
        from transformers import Gemma3ForCausalLM

        text = Gemma3ForCausalLM(model.config.text_config)
        text.model.load_state_dict(model.model.language_model.state_dict())
        model = text.eval()
    model.config.use_cache = False
    assert why_not_packed(model, SftArguments()) is None
    samples = [{"input_ids": list(range(40, 60))}, {"input_ids": list(range(200, 211))}]
    with torch.no_grad():
        packed = model(**{key: value for key, value in packing_collator(model)(samples).items()
                          if key != "labels"}).logits[0]
        alone = torch.cat([model(input_ids=torch.tensor([s["input_ids"]])).logits[0]
                           for s in samples])
    torch.testing.assert_close(packed, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type,data", [("gemma2-2b-it", "multi turn"),
                                             ("gemma3-4b-it", "chinese")])
def test_a_tiny_gemma_trains_packed_reloads_and_exports_merged(tokenizer, tmp_path, capsys,
                                                               model_type, data):
    registry = load_plugins().registry
    version = model_type[len("gemma")]
    _, folder = tiny_gemma(tokenizer, tmp_path / "tiny", version)
    dataset = tmp_path / "data.jsonl"
    dataset.write_text("".join(json.dumps({"messages": m}, ensure_ascii=False) + "\n"
                               for m in (CONVERSATIONS[data], PAIR) * 2), encoding="utf-8")

    trained = train_and_reload(registry, model_type, folder, dataset, tmp_path / "out",
                               lora_dropout=0.0)
    assert trained.saved["packing"] is True
    assert "packing off" not in capsys.readouterr().err
    # Gemma 2 has no SDPA (it would drop the soft-cap): eager, with transformers' packed mask;
    # Gemma 3 moved from SDPA to the per-sample kernel, the probe passing with it
    attention = trained.result.model.get_base_model().config._attn_implementation
    assert attention == ("eager" if version == "2" else KERNEL)
    adapter = json.loads((trained.result.checkpoint / "adapter_config.json").read_text())
    assert set(adapter["target_modules"]) == set(LORA_TARGETS)

    merged = export_merged(registry, trained, tmp_path / "merged")
    # Gemma 3's image-text checkpoint trained and exported as its text model
    assert type(merged).__name__ == ("Gemma2ForCausalLM" if version == "2"
                                     else "Gemma3ForCausalLM")
    assert merged.config.tie_word_embeddings
    assert merged.lm_head.weight.data_ptr() == merged.model.embed_tokens.weight.data_ptr()
    if version == "3":
        assert merged.model.embed_tokens.embed_scale == math.sqrt(TINY_GEMMA["hidden_size"])
