"""`sdk export --to gguf`: the file read back by transformers' own GGUF loader (a reader we did
not write) gives the merged model's logits, the tokenizer's ids and the chat template that
`sdk template render` renders, for a tiny model of each architecture the writer lays out."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import (
    CONVERSATIONS,
    TOKENIZER_CORPUS,
    TOKENIZERS,
    invoke_sdk,
    only_run,
    save_tiny_model,
)
from sdk.config import ExportArguments
from sdk.export import save_gguf
from sdk.templates.builtin import CHATML
from sdk.templates.engine import Template

# transformers' GGUF reader parses every token and merge in Python, three times per load (about
# 10 s for Qwen2's 151k tokens on an idle core): the tiny models keep the first tokens only.
SMALL_VOCAB = 2000
KEPT_ADDED = 16


def small_tokenizer(name: str, folder: Path) -> Path:
    """The tokenizer of TOKENIZERS/name cut to its first SMALL_VOCAB tokens, the merges among
    them and its first KEPT_ADDED added tokens (renumbered after them): the same kind of
    tokenizer, with the same pre-tokenizer and special tokens, that loads in a blink."""
    source = TOKENIZERS / name
    described = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    model = described["model"]
    vocab = {token: index for token, index in model["vocab"].items() if index < SMALL_VOCAB}
    model["vocab"] = vocab
    model["merges"] = [merge for merge in model["merges"]
                       if all(part in vocab for part in merge) and "".join(merge) in vocab]
    added = [token for token in described["added_tokens"] if token["id"] >= SMALL_VOCAB]
    for offset, token in enumerate(added[:KEPT_ADDED]):
        token["id"] = SMALL_VOCAB + offset
    described["added_tokens"] = [token for token in described["added_tokens"]
                                 if token["id"] < SMALL_VOCAB + KEPT_ADDED
                                 and token not in added[KEPT_ADDED:]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json").write_text(json.dumps(described), encoding="utf-8")
    config = json.loads((source / "tokenizer_config.json").read_text(encoding="utf-8"))
    config.pop("added_tokens_decoder", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def assert_within_q8_0_rounding(reference, quantized) -> None:
    """Every matrix of ``quantized`` is ``reference``'s rounded to q8_0: in each block of 32
    weights, off by at most half a step (the block's largest magnitude / 127), plus the
    float16 rounding of the block's scale; vectors (norms) are kept exactly."""
    read = quantized.state_dict()
    for name, weight in reference.state_dict().items():
        weight, copy = weight.float(), read[name].float()
        if weight.dim() == 1:
            assert torch.equal(copy, weight), name
            continue
        blocks, copies = weight.reshape(-1, 32), copy.reshape(-1, 32)
        largest = blocks.abs().amax(dim=1, keepdim=True)
        bound = largest / 254 + largest * 2.0 ** -10 + 1e-12
        assert ((copies - blocks).abs() <= bound).all(), name


def reread(folder: Path, name: str):
    """The model and tokenizer as transformers' GGUF loader reads ``folder/name``."""
    return (AutoModelForCausalLM.from_pretrained(folder, gguf_file=name),
            AutoTokenizer.from_pretrained(folder, gguf_file=name))


# architecture -> (model and config classes, tokenizer, config settings beyond TINY_SIZE).
# Gemma's and Phi-3's tokenizers are not in TOKENIZERS: Mistral's stands in, whose ids the
# reader's tokenizer for those architectures (Gemma: no prefix space; Phi-3: the prefix space
# by a normalizer, which differs on leading spaces) is not meant to give.
OTHER_TOKENIZER = {"gemma2", "gemma3", "phi3"}
ARCHITECTURES = {
    "llama": ("Llama", "qwen2", {"tie_word_embeddings": True}),
    "llama-3": ("Llama", "llama3", {"tie_word_embeddings": False}),
    "mistral": ("Mistral", "mistral-v0.1", {"sliding_window": None}),
    "qwen2": ("Qwen2", "qwen2", {"tie_word_embeddings": False}),
    # transformers' reader takes Qwen3's head size from its config's default, 128
    "qwen3": ("Qwen3", "qwen2", {"head_dim": 128}),
    "gemma2": ("Gemma2", "mistral-v0.1", {"head_dim": 16, "query_pre_attn_scalar": 16,
                                    "sliding_window": 64}),
    # six layers, the sixth attending to all tokens (llama.cpp's fixed pattern), a window of 8;
    # transformers' reader takes the query scale from its config's default, 256
    "gemma3": (("Gemma3ForCausalLM", "Gemma3TextConfig"), "mistral-v0.1", {
        "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 8,
        "num_hidden_layers": 6}),
    "phi3": ("Phi3", "mistral-v0.1", {"pad_token_id": 0}),  # its default, 32000, is past 2016
}


def tiny_model(architecture: str, folder: Path, full_vocabulary: bool = False):
    """A tiny random model of ``architecture`` with its tokenizer: SMALL_VOCAB tokens of it
    (for transformers' slow reader), or all of them."""
    import transformers

    prefix, tokenizer_name, settings = ARCHITECTURES[architecture]
    tokenizer = AutoTokenizer.from_pretrained(
        TOKENIZERS / tokenizer_name if full_vocabulary
        else small_tokenizer(tokenizer_name, folder / "tok"))
    if "pad_token_id" in settings:  # the file's padding id sets the config's read back
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(settings["pad_token_id"])
    model_class, config_class = (prefix if isinstance(prefix, tuple)
                                 else (f"{prefix}ForCausalLM", f"{prefix}Config"))
    save_tiny_model(getattr(transformers, model_class), getattr(transformers, config_class),
                    tokenizer, folder / "model", **settings)
    model = AutoModelForCausalLM.from_pretrained(folder / "model", dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():  # norms away from 1, biases away from 0: a misplaced one shows
        for value in model.parameters():
            if value.ndim == 1:
                value.add_(torch.randn_like(value) * 0.1)
    return model.eval(), tokenizer


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_each_architecture_reads_back_with_the_same_logits_ids_and_template(architecture,
                                                                            tmp_path):
    model, tokenizer = tiny_model(architecture, tmp_path)
    template = Template.for_tokenizer(CHATML, tokenizer)
    path = save_gguf(tmp_path, model, tokenizer, template,
                     ExportArguments(to="gguf", gguf_type="f16"), "tiny")
    assert path.name == "tiny-f16.gguf" and not (tmp_path / ".tokenizer").exists()
    read, read_tokenizer = reread(tmp_path, path.name)

    ids = tokenizer(TOKENIZER_CORPUS[1] + TOKENIZER_CORPUS[12], return_tensors="pt").input_ids
    expected = logits(model, ids)
    # f16 weights (Gemma's norms stored as 1 + w): within bf16's tolerance of the fp32 model
    torch.testing.assert_close(logits(read, ids), expected, rtol=1.6e-2,
                               atol=2e-2 * expected.abs().max().item())
    for text in TOKENIZER_CORPUS if architecture not in OTHER_TOKENIZER else ():
        assert read_tokenizer(text).input_ids == tokenizer(text).input_ids, text
    for messages in CONVERSATIONS.values():
        for prompt in (False, True):
            assert read_tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            ) == template.render(messages, prompt)


# --gguf-type -> the largest logit error allowed, as a share of the largest logit: bf16 keeps
# 8 bits of mantissa; q5_0 and q4_0 one scale per 32 weights and 5 or 4 bits each.
TYPE_TOLERANCES = {"bf16": 0.02, "q5_0": 0.1, "q4_0": 0.2}


def test_each_type_is_stored_as_asked_and_reads_back_close(tmp_path):
    import gguf

    model, tokenizer = tiny_model("qwen2", tmp_path)
    template = Template.for_tokenizer(CHATML, tokenizer)
    ids = tokenizer(TOKENIZER_CORPUS[0], return_tensors="pt").input_ids
    expected = logits(model, ids)
    for gguf_type, tolerance in TYPE_TOLERANCES.items():
        folder = tmp_path / gguf_type
        folder.mkdir()
        path = save_gguf(folder, model, tokenizer, template,
                         ExportArguments(to="gguf", gguf_type=gguf_type), "tiny")
        stored = {tensor.name: tensor.tensor_type.name
                  for tensor in gguf.GGUFReader(path).tensors}
        assert stored["blk.0.attn_q.weight"] == gguf_type.upper()
        assert stored["blk.0.attn_q.bias"] == stored["output_norm.weight"] == "F32"
        read, _ = reread(folder, path.name)
        assert (logits(read, ids) - expected).abs().max() <= tolerance * expected.abs().max()


def test_rope_scaling_is_written_and_what_llama_cpp_cannot_run_is_refused(tmp_path):
    """--rope-scaling's settings (which transformers' reader does not read back: checked in
    the file's metadata) and a kind llama.cpp has no equivalent of."""
    import gguf

    from sdk.errors import SdkError

    model, tokenizer = tiny_model("llama", tmp_path)
    template = Template.for_tokenizer(CHATML, tokenizer)
    model.config.rope_parameters.update(rope_type="yarn", factor=4.0,
                                        original_max_position_embeddings=512)
    path = save_gguf(tmp_path, model, tokenizer, template,
                     ExportArguments(to="gguf", gguf_type="f16"), "tiny")
    fields = gguf.GGUFReader(path).fields
    assert fields["llama.rope.scaling.type"].contents() == "yarn"
    assert fields["llama.rope.scaling.factor"].contents() == 4.0
    assert fields["llama.rope.scaling.original_context_length"].contents() == 512
    assert fields["llama.context_length"].contents() == 2048
    # Llama 3.1's: each default frequency divided by llama.cpp's rope_freqs gives the scaled
    # frequencies transformers computes
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    model.config.rope_parameters = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64}
    path = save_gguf(tmp_path / "llama3", model, tokenizer, template,
                     ExportArguments(to="gguf", gguf_type="f16"), "tiny")
    reader = gguf.GGUFReader(path)
    factors = next(torch.from_numpy(tensor.data.copy()) for tensor in reader.tensors
                   if tensor.name == "rope_freqs.weight")
    default = 1.0 / (10000.0 ** (torch.arange(0, 8, 2).float() / 8))
    scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](model.config, "cpu")
    torch.testing.assert_close(default / factors, scaled)
    assert factors.max() == 8.0 and "llama.rope.scaling.type" not in reader.fields
    model.config.rope_parameters.update(rope_type="dynamic")
    with pytest.raises(SdkError, match="'dynamic'-wise, which the GGUF writer does not express"):
        save_gguf(tmp_path / "dynamic", model, tokenizer, template,
                  ExportArguments(to="gguf"), "tiny")
    assert not list((tmp_path / "dynamic").iterdir())  # (the export's staging folder)


GGUF_PLUGIN = """
from sdk import hookimpl
from sdk.specs import ModelSpec


def load(spec, options):
    from sdk.models.loader import load_pretrained
    return load_pretrained(options.model_dir or {folder!r}, options)


@hookimpl
def register_models(register):
    register(ModelSpec(model_type="tiny-gguf", family="tiny", template="chatml", loader=load,
                       config_model_types=("llama",)))
    register(ModelSpec(model_type="tiny-glm", family="tiny", template="chatml", loader=load,
                       config_model_types=("chatglm",)))
"""


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run (4 steps at a high learning rate, so the merged weights differ from the
    base) of a tiny Llama with Qwen2's tokenizer, and the plugin file registering it."""
    folder = tmp_path_factory.mktemp("gguf-run")
    tokenizer = AutoTokenizer.from_pretrained(small_tokenizer("qwen2", folder / "tok"))
    model_dir = save_tiny_model(__import__("transformers").LlamaForCausalLM,
                                __import__("transformers").LlamaConfig, tokenizer,
                                folder / "model", tie_word_embeddings=True,
                                eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"))
    plugin = folder / "gguf_plugin.py"
    plugin.write_text(GGUF_PLUGIN.format(folder=str(model_dir)))
    data = folder / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "I am Tiny, made by the tests."}]}) + "\n"
        for question in ("Who are you?", "What is your name?")))
    result = invoke_sdk("--plugin", plugin, "sft", "--model-type", "tiny-gguf", "--dataset", data,
                        "--max-steps", "4", "--batch-size", "2", "--learning-rate", "0.05",
                        "--output-dir", folder / "output")
    assert result.exit_code == 0, result.output
    return only_run(folder / "output", "tiny-gguf"), plugin


def test_a_lora_run_exports_to_q8_0_with_a_modelfile_and_logits_alike(lora_run, run_cli,
                                                                      tmp_path):
    """`sdk export --to gguf --gguf-type q8_0 --ollama` on an adapter run: the merge is
    implied; transformers' reader gives back the merged weights rounded to q8_0, with which
    it computes what the merged model computes, and the Modelfile points at the file. (Greedy
    replies are compared on the embedded model, whose choices are not a random one's ties.)"""
    from sdk.config import InferArguments
    from sdk.infer.load import load_for_inference
    from sdk.plugins import load_plugins

    run, plugin = lora_run
    out = tmp_path / "gguf"
    result = run_cli("--plugin", plugin, "export", "--ckpt-dir", run, "--to", "gguf",
                     "--gguf-type", "q8_0", "--ollama", "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out) and "GGUF (q8_0)" in result.stderr
    assert {p.name for p in out.iterdir()} == {"tiny-gguf-q8_0.gguf", "Modelfile",
                                               "sft_args.json"}
    assert (out / "Modelfile").read_text().startswith("FROM ./tiny-gguf-q8_0.gguf\n")
    exported = json.loads((out / "sft_args.json").read_text())["exported_from"]
    assert (exported["format"], exported["gguf_type"], exported["merged"]) == ("gguf", "q8_0",
                                                                              True)
    infer = run_cli("--plugin", plugin, "infer", "--ckpt-dir", out, "--query", "Hi")
    assert infer.exit_code != 0 and "holds a GGUF export, which llama.cpp" in infer.output

    merged, tokenizer, template = load_for_inference(InferArguments(
        ckpt_dir=str(run), merge_lora=True), load_plugins([str(plugin)]).registry)
    read, read_tokenizer = reread(out, "tiny-gguf-q8_0.gguf")
    base = AutoModelForCausalLM.from_pretrained(lora_run[0].parent.parent.parent / "model")
    assert_within_q8_0_rounding(merged, read)
    # the merged model given the file's (rounded) weights: the reader's model must compute
    # exactly what it computes, so the file's settings (norms, rope, heads) are ours too
    rounded = copy.deepcopy(merged)
    rounded.load_state_dict(read.state_dict())
    for messages in CONVERSATIONS.values():
        ids = read_tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 return_tensors="pt", return_dict=True).input_ids
        assert ids.tolist()[0] == tokenizer(template.render(messages, True)).input_ids
        assert (logits(merged, ids) - logits(base, ids)).abs().max() > 0.05  # the adapter shows
        torch.testing.assert_close(logits(read, ids), logits(rounded, ids), rtol=0, atol=1e-5)


def test_gguf_exports_are_refused_where_they_cannot_work(lora_run, run_cli, tmp_path):
    run, plugin = lora_run
    ollama_alone = run_cli("--plugin", plugin, "export", "--ckpt-dir", run, "--ollama")
    assert ollama_alone.exit_code != 0 and "add --to gguf" in ollama_alone.output
    # an architecture GGUF cannot lay out: refused before the model loads
    other = tmp_path / "other-run"
    shutil.copytree(run, other)
    for arguments in other.rglob("sft_args.json"):
        saved = json.loads(arguments.read_text())
        arguments.write_text(json.dumps({**saved, "model_type": "tiny-glm"}))
    refused = run_cli("--plugin", plugin, "export", "--ckpt-dir", other, "--to", "gguf")
    assert refused.exit_code != 0
    assert "tiny-glm' is a chatglm model, which the GGUF writer cannot lay out" in \
        refused.output
    assert not list(tmp_path.glob("*gguf*"))


def test_push_gguf_uploads_the_file_and_modelfile_beside_the_adapter(lora_run, run_cli,
                                                                     tmp_path):
    """`sdk push --push-gguf q8_0` to the local hub: the adapter's files, the GGUF file (read
    back by transformers' reader) and the Modelfile, and a card saying how to run them; an
    architecture GGUF cannot hold is refused before anything is staged."""
    run, plugin = lora_run
    repo = tmp_path / "hub" / "tiny"
    pushed = run_cli("--plugin", plugin, "push", "--hub", "local", "--ckpt-dir", run,
                     "--repo-id", repo, "--push-gguf", "q8_0")
    assert pushed.exit_code == 0, pushed.output
    files = {path.name for path in repo.iterdir()}
    assert {"adapter_model.safetensors", "tiny-gguf-q8_0.gguf", "Modelfile",
            "README.md"} <= files
    assert not [path for path in repo.rglob(".*")]  # no export folder left in the push
    card = (repo / "README.md").read_text()
    assert "llama-cli -m tiny-gguf-q8_0.gguf -cnv" in card and "ollama create" in card
    alone = tmp_path / "gguf-alone"  # beside adapter_config.json, transformers loads the base
    alone.mkdir()
    shutil.copy(repo / "tiny-gguf-q8_0.gguf", alone)
    read, _ = reread(alone, "tiny-gguf-q8_0.gguf")
    assert type(read).__name__ == "LlamaForCausalLM"
    assert not [path for path in run.rglob(".*")]  # the checkpoint is untouched

    sft = run_cli("--plugin", plugin, "sft", "--model-type", "tiny-glm", "--dataset",
                  "x.jsonl", "--push-to-hub", "--hub", "local", "--hub-model-id",
                  tmp_path / "hub" / "never", "--push-gguf", "q8_0")
    assert sft.exit_code != 0 and "cannot lay out" in sft.output


@pytest.mark.slow
def self_cognition_to_gguf(run_cli, folder: Path, epochs: int = 3, learning_rate: float = 1e-3
                           ) -> tuple[Path, Path, float]:
    """The self-cognition demo's run (examples/self_cognition/demo.sh's settings unless told
    other epochs and learning rate) on the embedded SmolLM2, exported to q8_0 GGUF with a
    Modelfile: the run, the .gguf file, and the time.perf_counter() at which training ended."""
    import time

    result = run_cli("sft", "--model-type", "smollm2-135m-instruct", "--sft-type", "lora",
                     "--dataset", "self-cognition", "--model-name", "雪貂", "Ferret",
                     "--model-author", "sft-sdk 团队", "the sft-sdk team",
                     "--num-train-epochs", epochs, "--batch-size", "4",
                     "--gradient-accumulation-steps", "2", "--learning-rate", learning_rate,
                     "--save-steps", "1000", "--output-dir", folder / "out")
    assert result.exit_code == 0, result.output
    trained = time.perf_counter()
    run = only_run(folder / "out", "smollm2-135m-instruct")
    exported = run_cli("export", "--ckpt-dir", run, "--to", "gguf", "--gguf-type", "q8_0",
                       "--ollama", "--output-dir", folder / "gguf")
    assert exported.exit_code == 0, exported.output
    return run, folder / "gguf" / "smollm2-135m-instruct-q8_0.gguf", trained


def test_the_embedded_model_taught_a_new_name_answers_with_it_from_gguf(run_cli, tmp_path):
    """A self-cognition run on the embedded SmolLM2, exported to q8_0 GGUF: through
    transformers' GGUF reader it answers "Who are you?" with the new name, prompted by the chat
    template inside the file, and its greedy replies to the demo's questions are the merged
    model's. One epoch at 4e-3 teaches the name in a third of the demo's 39 steps (the demo's
    own settings run through llama.cpp in tests/test_llama_cpp.py)."""
    import time

    from sdk.config import InferArguments
    from sdk.infer.load import load_for_inference
    from sdk.plugins import load_plugins

    started = time.perf_counter()
    run, path, trained = self_cognition_to_gguf(run_cli, tmp_path, epochs=1, learning_rate=4e-3)
    written = time.perf_counter()
    model, tokenizer = reread(path.parent, path.name)
    greedy = dict(max_new_tokens=30, do_sample=False)
    replies = {}
    for question in ("Who are you?", "你是谁？"):  # the demo's prompts
        ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                            add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True).input_ids
        replies[question] = ids, model.generate(ids, **greedy)[0].tolist()
    ids, answer = replies["Who are you?"]
    reply = tokenizer.decode(answer[ids.shape[1]:], skip_special_tokens=True)
    print(f"sft {trained - started:.0f} s, export {written - trained:.0f} s, read and answer "
          f"{time.perf_counter() - written:.0f} s: {reply!r}")
    assert "Ferret" in reply
    # q8_0 keeps the trained model's choices: its greedy replies are the merged model's
    merged, _, _ = load_for_inference(InferArguments(ckpt_dir=str(run), merge_lora=True),
                                      load_plugins().registry)
    for question, (ids, answer) in replies.items():
        assert merged.generate(ids, **greedy)[0].tolist() == answer, question


def test_a_sentencepiece_tokenizer_s_scores_come_from_its_model_file(tmp_path):
    """llama.cpp merges a SentencePiece-style vocabulary by piece score: the scores written are
    the tokenizer.model's (Mistral's "▁▁" ranks last there, not by its id), and a checkpoint
    keeps that file, which transformers 5 does not save."""
    import sentencepiece

    from sdk.export_gguf import vocabulary
    from sdk.train.trainer import keep_sentencepiece_model

    folder = TOKENIZERS / "mistral-v0.1"
    official = sentencepiece.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    expected = [official.get_score(index) for index in range(official.get_piece_size())]
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert vocabulary(tokenizer, len(expected))[3] == expected
    assert expected != sorted(expected, reverse=True)  # not the id order

    tokenizer.save_pretrained(tmp_path / "checkpoint")
    assert not (tmp_path / "checkpoint" / "tokenizer.model").exists()
    keep_sentencepiece_model(tokenizer, tmp_path / "checkpoint")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "checkpoint")
    assert vocabulary(reloaded, len(expected) + 2)[3] == expected + [-32000.0, -32001.0]


def test_a_gemma3_model_llama_cpp_would_build_otherwise_is_refused():
    """llama.cpp fixes Gemma 3's layer pattern, local rotary base and query scale: a model
    that differs is refused, not written to compute something else."""
    from transformers import Gemma3TextConfig

    from sdk.errors import SdkError
    from sdk.export_gguf import check_gemma3

    built = dict(hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                 query_pre_attn_scalar=16, num_hidden_layers=6)
    check_gemma3(Gemma3TextConfig(**built), 16)
    for different in ({"query_pre_attn_scalar": 32}, {"layer_types": ["full_attention"] * 6},
                      {"rope_parameters": {"sliding_attention": {"rope_type": "default",
                                                                 "rope_theta": 5e4},
                                           "full_attention": {"rope_type": "default",
                                                              "rope_theta": 1e6}}}):
        with pytest.raises(SdkError, match="not built as llama.cpp builds Gemma 3"):
            check_gemma3(Gemma3TextConfig(**{**built, **different}), 16)
