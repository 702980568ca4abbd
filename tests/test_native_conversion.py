"""sdk/models/native.py: an official checkpoint folder is converted once into a standard
transformers folder in the cache, reused until its files or the conversion change, never left
half-written. The family plugins test their own conversions against the official code; here a
Llama whose attention projections are stored fused (as remote-code families store them) stands
in for one. The SentencePiece part of the families' tokenizer conversions is tested here on a
real tokenizer.model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from conftest import REMOTE_CODE, TINY_SIZE, TOKENIZER_CORPUS, TOKENIZERS
from sdk.errors import SdkError
from sdk.models import native
from sdk.models.native import Conversion, native_folder

HIDDEN, KV = TINY_SIZE["hidden_size"], TINY_SIZE["num_key_value_heads"]
KV_WIDTH = HIDDEN // TINY_SIZE["num_attention_heads"] * KV


def fused_config(official: dict) -> dict:
    return {**official["llama"], "model_type": "llama", "architectures": ["LlamaForCausalLM"]}


def split_qkv(name: str, tensor, official: dict) -> list:
    if name.endswith("rotary.inv_freq"):  # a buffer the native model computes itself
        return []
    if name.endswith("self_attn.qkv.weight"):
        q, k, v = tensor.split([HIDDEN, KV_WIDTH, KV_WIDTH])
        base = name.removesuffix("qkv.weight")
        return [(f"{base}q_proj.weight", q), (f"{base}k_proj.weight", k),
                (f"{base}v_proj.weight", v)]
    return [(name, tensor)]


def copy_tokenizer(source: Path, destination: Path) -> None:
    AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2").save_pretrained(destination)


FUSED = Conversion(layout="llama", version=1, config=fused_config, tensors=split_qkv,
                   tokenizer=copy_tokenizer)


@pytest.fixture(scope="module")
def reference() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=151665, **TINY_SIZE)).eval()


def write_official(folder: Path, model: LlamaForCausalLM, weights: str) -> Path:
    """The model with q/k/v stored as one fused weight, a buffer stored too, and its config
    under a family key of its own."""
    folder.mkdir(parents=True)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(("k_proj.weight", "v_proj.weight")):
            continue
        if name.endswith("q_proj.weight"):
            base = name.removesuffix("q_proj.weight")
            tensor = torch.cat([tensor, model.state_dict()[f"{base}k_proj.weight"],
                                model.state_dict()[f"{base}v_proj.weight"]])
            name = f"{base}qkv.weight"
        state[name] = tensor.clone()
    state["model.layers.0.self_attn.rotary.inv_freq"] = torch.ones(4)
    if weights.endswith(".bin"):
        torch.save(state, folder / weights)
    else:
        from safetensors.torch import save_file

        save_file(state, str(folder / weights))
    config = {"model_type": "fused", "llama": model.config.to_diff_dict()}
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def logits(model, ids=((1, 20, 300, 4000, 50000),)):
    with torch.no_grad():
        return model(torch.tensor(ids)).logits


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_the_converted_folder_loads_natively_to_the_same_logits(
        tmp_path, monkeypatch, reference, weights, capsys):
    monkeypatch.setenv("SFT_SDK_CACHE", str(tmp_path / "cache"))
    source = write_official(tmp_path / "official", reference, weights)
    folder = native_folder(source, FUSED)
    assert "converting" in capsys.readouterr().err
    assert folder.parent == tmp_path / "cache" / "native"
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    converted = AutoModelForCausalLM.from_pretrained(folder)
    assert type(converted) is LlamaForCausalLM
    torch.testing.assert_close(logits(converted), logits(reference), rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(folder)("<|im_end|>")["input_ids"] == [151645]


def test_a_folder_is_converted_once_and_again_when_its_files_or_the_conversion_change(
        tmp_path, monkeypatch, reference, capsys):
    monkeypatch.setenv("SFT_SDK_CACHE", str(tmp_path / "cache"))
    source = write_official(tmp_path / "official", reference, "model.safetensors")
    first = native_folder(source, FUSED)
    capsys.readouterr()
    assert native_folder(source, FUSED) == first
    assert capsys.readouterr().err == ""  # found in the cache: nothing converted
    newer = Conversion(**{**FUSED.__dict__, "version": 2})
    assert native_folder(source, newer) != first
    (source / "config.json").write_text((source / "config.json").read_text() + "\n")
    assert native_folder(source, FUSED) not in (first, native_folder(source, newer))


def test_large_checkpoints_are_written_in_shards_with_an_index(tmp_path, monkeypatch, reference):
    monkeypatch.setenv("SFT_SDK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(native, "SHARD_BYTES", 4 * 1024**2)  # the embeddings alone are ~19 MB
    source = write_official(tmp_path / "official", reference, "model.safetensors")
    folder = native_folder(source, FUSED)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0].endswith(f"-of-{len(shards):05d}.safetensors")
    converted = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(logits(converted), logits(reference), rtol=0, atol=0)


def test_a_conversion_that_fails_leaves_nothing_that_looks_converted(tmp_path, monkeypatch,
                                                                      reference):
    monkeypatch.setenv("SFT_SDK_CACHE", str(tmp_path / "cache"))
    source = write_official(tmp_path / "official", reference, "model.safetensors")

    def broken_tokenizer(source: Path, destination: Path) -> None:
        raise SdkError("no tokenizer here")

    with pytest.raises(SdkError, match="no tokenizer here"):
        native_folder(source, Conversion(**{**FUSED.__dict__, "tokenizer": broken_tokenizer}))
    assert list((tmp_path / "cache" / "native").iterdir()) == []


def test_a_folder_without_weights_or_with_a_broken_file_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_SDK_CACHE", str(tmp_path / "cache"))
    source = tmp_path / "official"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"llama": {}}))
    with pytest.raises(SdkError, match="holds no weights"):
        native_folder(source, FUSED)
    (source / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(SdkError, match=r"pytorch_model.bin cannot be read as PyTorch weights"):
        native_folder(source, FUSED)
    (source / "config.json").write_text("{not json")
    with pytest.raises(SdkError, match=r"config.json is not valid JSON"):
        native_folder(source, FUSED)


def test_the_tokenizer_alone_is_converted_without_reading_the_weights(tmp_path, monkeypatch,
                                                                     reference):
    monkeypatch.setenv("SFT_SDK_CACHE", str(tmp_path / "cache"))
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "config.json").write_text(json.dumps({"llama": {}}))
    (unreadable / "pytorch_model.bin").write_bytes(b"not a pickle")  # never read
    tokenizer_only = native_folder(unreadable, FUSED, weights=False)
    assert not [p for p in tokenizer_only.iterdir() if p.suffix in (".safetensors", ".bin")]
    assert (tokenizer_only / "config.json").is_file()
    assert AutoTokenizer.from_pretrained(tokenizer_only).convert_tokens_to_ids(
        "<|im_end|>") == 151645
    assert native_folder(unreadable, FUSED, weights=False) == tokenizer_only  # cached

    source = write_official(tmp_path / "official", reference, "model.safetensors")
    whole = native_folder(source, FUSED)
    assert native_folder(source, FUSED, weights=False) == whole  # the whole copy, once made


def test_a_sentencepiece_model_becomes_a_tokenizer_with_its_ids_and_pieces_made_special(
        tmp_path, monkeypatch):
    import importlib.util

    import sentencepiece

    source = REMOTE_CODE / "internlm-chat-7b"  # <eoa> is one of its user-defined pieces
    reference = sentencepiece.SentencePieceProcessor(model_file=str(source / "tokenizer.model"))
    proto = native.read_sentencepiece(source, "InternLM")
    backend, vocab = native.sentencepiece_tokenizer(proto, {2: "<end>"})
    assert len(vocab) == reference.get_piece_size() and vocab["<end>"] == 2
    assert "</s>" not in vocab  # renamed
    for text in TOKENIZER_CORPUS:
        assert backend.encode(text, add_special_tokens=False).ids == reference.encode(text), text
    native.add_special_pieces(backend, vocab, ["<end>", "<eoa>", "<eoa>"], source)
    assert backend.encode("a<end>b", add_special_tokens=False).ids[1] == 2
    assert backend.decode(backend.encode("hi<eoa>").ids, skip_special_tokens=True) == "hi"
    with pytest.raises(SdkError, match=r"the special tokens \['<new>'\] are not pieces of "
                                       "tokenizer.model; not InternLM's"):
        native.add_special_pieces(backend, vocab, ["<eoa>", "<new>"], source, "not InternLM's")
    with pytest.raises(SdkError, match="has no tokenizer.model"):
        native.read_sentencepiece(tmp_path, "InternLM")
    (tmp_path / "tokenizer.model").write_bytes(b"\xff not a protobuf")
    with pytest.raises(SdkError, match=r"is not a SentencePiece model; X's tokenizer is one "
                                       r"\(it is Y\)"):
        native.read_sentencepiece(tmp_path, "X", "it is Y")
    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("google") else found(name, *a))
    with pytest.raises(SdkError, match="Converting InternLM's tokenizer.model needs protobuf"):
        native.read_sentencepiece(source, "InternLM")
