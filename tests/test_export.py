"""`sdk export`: a checkpoint as a standalone model folder that plain transformers loads, with
the chat template and stop ids of the sdk template, and that `sdk infer` reloads."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import CONVERSATIONS, TINY_MODEL_TYPE
from sdk.config import InferArguments
from sdk.infer.chat import generate
from sdk.infer.load import checkpoint_or_export
from sdk.testing import AnyTunerArguments, train_and_reload
from sdk.train.sft import run_sft


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs.to(model.device)).logits.float()


def answer(run_cli, plugin_file, folder) -> str:
    question = CONVERSATIONS["single turn"][0]["content"]
    result = run_cli("--plugin", plugin_file, "infer", "--ckpt-dir", folder, "--query",
                     question, "--max-new-tokens", "8", "--stream", "false")
    assert result.exit_code == 0, result.output
    return result.stdout


def train(plugin_set, identity_data, tmp_path, **overrides):
    settings = dict(model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)],
                    output_dir=str(tmp_path / "output"), max_steps=1, batch_size=2,
                    gradient_accumulation_steps=1, learning_rate=1e-2, warmup_ratio=0.0)
    return run_sft(AnyTunerArguments(**{**settings, **overrides}), plugin_set.registry)


def test_a_merged_lora_export_is_a_plain_transformers_model(plugin_set, tiny_plugin_file,
                                                           tiny_model_dir, identity_data,
                                                           tmp_path, run_cli):
    trained = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                               identity_data, tmp_path / "output", system="You are Tiny.")
    out = tmp_path / "exported"
    result = run_cli("--plugin", tiny_plugin_file, "export", "--ckpt-dir",
                     trained.result.run_dir, "--merge-lora", "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)

    files = {p.name for p in out.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json", "sft_args.json"} <= files
    assert not files & {"adapter_model.safetensors", "optimizer.pt", "trainer_state.json",
                        "chat_template.jinja"}  # the template is in tokenizer_config.json
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left

    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"  # no peft layers left
    torch.testing.assert_close(logits(model, trained.inputs), logits(trained.model, trained.inputs),
                               rtol=1e-5, atol=1e-5)
    im_end = trained.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end in json.loads((out / "generation_config.json").read_text())["eos_token_id"]

    # transformers prompts the export as `sdk` does, the system prompt of training included
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert "chat_template" in json.loads((out / "tokenizer_config.json").read_text())
    for messages in CONVERSATIONS.values():
        for prompt in (False, True):
            assert tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=prompt
            ) == trained.template.render(messages, prompt)
    assert "You are Tiny." in trained.template.render(CONVERSATIONS["single turn"])

    saved = json.loads((out / "sft_args.json").read_text())
    assert (saved["model_type"], saved["template"], saved["sft_type"]) == (
        TINY_MODEL_TYPE, "chatml", "full")
    assert saved["exported_from"]["merged"] and saved["exported_from"]["sft_type"] == "lora"
    # `sdk infer` answers from the export as from the checkpoint (reloaded as it would)
    from_checkpoint = generate(trained.model, trained.tokenizer, trained.template,
                               CONVERSATIONS["single turn"], InferArguments(max_new_tokens=8))
    assert from_checkpoint
    assert answer(run_cli, tiny_plugin_file, out).strip() == from_checkpoint


def test_the_default_folder_is_beside_the_checkpoint_and_is_never_overwritten_silently(
        plugin_set, tiny_plugin_file, identity_data, tmp_path, run_cli, monkeypatch):
    run = train(plugin_set, identity_data, tmp_path)
    export = ("--plugin", tiny_plugin_file, "export", "--ckpt-dir", run.checkpoint)

    first = run_cli(*export, "--merge-lora")
    assert first.exit_code == 0, first.output
    out = run.checkpoint.with_name(run.checkpoint.name + "-merged")
    assert first.stdout.strip() == str(out)
    weights = (out / "model.safetensors").read_bytes()

    # a failure after the weights are written leaves the earlier export as it was
    def fail(template):
        raise RuntimeError("cut short")

    with monkeypatch.context() as patched:
        patched.setattr("sdk.export.to_jinja", fail)
        with pytest.raises(RuntimeError, match="cut short"):
            run_cli(*export, "--merge-lora", "--overwrite", "--dtype", "fp16")
    assert (out / "model.safetensors").read_bytes() == weights
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "checkpoint-1", "checkpoint-1-merged", "logging.jsonl", "loss.png", "sft_args.json"]

    again = run_cli(*export, "--merge-lora")
    assert again.exit_code == 1
    assert "holds an earlier export; pass --overwrite" in again.stderr
    marker = out / "note.txt"  # not the export's: --overwrite keeps it (issue 19)
    marker.write_text("mine")
    kept = run_cli(*export, "--merge-lora", "--overwrite", "--dtype", "bf16")
    assert kept.exit_code == 1 and "files that no export wrote: note.txt" in kept.stderr
    marker.unlink()
    replaced = run_cli(*export, "--merge-lora", "--overwrite", "--dtype", "bf16")
    assert replaced.exit_code == 0, replaced.output
    assert (out / "model.safetensors").read_bytes() != weights
    assert json.loads((out / "sft_args.json").read_text())["dtype"] == "bf16"

    # a folder that is not an export is never replaced, --overwrite or not
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    refused = run_cli(*export, "--merge-lora", "--overwrite", "--output-dir", other)
    assert refused.exit_code == 1 and "holds no earlier export" in refused.stderr
    assert [p.name for p in other.iterdir()] == ["keep.txt"]

    # --ckpt-dir takes the export, and the run folder still means its checkpoint
    assert checkpoint_or_export(str(out)) == out
    assert checkpoint_or_export(str(run.run_dir)) == run.checkpoint


def test_wrong_exports_of_an_adapter_are_refused_and_change_nothing(
        plugin_set, tiny_plugin_file, identity_data, tmp_path, run_cli):
    run = train(plugin_set, identity_data, tmp_path)
    (tmp_path / "file").write_text("")
    before = sorted(p.name for p in run.run_dir.iterdir())
    for flags, message in [
        ([], "holds a lora adapter, not a whole model: pass --merge-lora"),
        (["--merge-lora", "--output-dir", run.checkpoint], "is the checkpoint or a folder"),
        (["--merge-lora", "--output-dir", run.run_dir], "is the checkpoint or a folder"),
        (["--merge-lora", "--output-dir", tmp_path / "file"], "is a file; give a folder"),
        (["--merge-lora", "--model-id-or-path", tmp_path], "is not a model folder"),
    ]:
        result = run_cli("--plugin", tiny_plugin_file, "export", "--ckpt-dir", run.checkpoint,
                         *flags)
        assert result.exit_code == 1 and message in result.stderr, (flags, result.output)
    assert sorted(p.name for p in run.run_dir.iterdir()) == before


def test_virtual_tokens_have_no_standalone_export(plugin_set, tiny_plugin_file,
                                                  identity_data, tmp_path, run_cli):
    run = train(plugin_set, identity_data, tmp_path, sft_type="prompt", num_virtual_tokens=4)
    for flags in ([], ["--merge-lora"]):
        result = run_cli("--plugin", tiny_plugin_file, "export", "--ckpt-dir", run.checkpoint,
                         *flags)
        assert result.exit_code == 1
        assert "holds the virtual tokens of the prompt tuner, which cannot be merged" in (
            result.stderr)


def test_a_bad_checkpoint_path_is_refused(run_cli, tmp_path):
    result = run_cli("export", "--ckpt-dir", tmp_path / "missing", "--merge-lora")
    assert result.exit_code == 1 and "is not a folder" in result.stderr
    result = run_cli("export", "--merge-lora")
    assert result.exit_code == 1 and "Give --ckpt-dir" in result.stderr


def test_a_full_checkpoint_exports_without_merging(plugin_set, tiny_plugin_file, identity_data,
                                                   tmp_path, run_cli):
    run = train(plugin_set, identity_data, tmp_path, sft_type="full")
    refused = run_cli("--plugin", tiny_plugin_file, "export", "--ckpt-dir", run.checkpoint,
                      "--merge-lora")
    assert refused.exit_code == 1
    assert "holds a whole model (--sft-type full), not an adapter" in refused.stderr

    result = run_cli("--plugin", tiny_plugin_file, "export", "--ckpt-dir", run.checkpoint)
    assert result.exit_code == 0, result.output
    out = run.checkpoint.with_name(run.checkpoint.name + "-export")
    assert not (out / "optimizer.pt").exists()
    model = AutoModelForCausalLM.from_pretrained(out)
    inputs = AutoTokenizer.from_pretrained(out).apply_chat_template(
        CONVERSATIONS["single turn"], add_generation_prompt=True, return_dict=True,
        return_tensors="pt")
    torch.testing.assert_close(logits(model, inputs),
                               logits(run.model.eval(), inputs), rtol=1e-5, atol=1e-5)
    assert answer(run_cli, tiny_plugin_file, out) == answer(run_cli, tiny_plugin_file,
                                                            run.checkpoint)


def test_a_qlora_adapter_merges_into_the_unquantized_base(plugin_set, tiny_plugin_file,
                                                          tiny_model_dir, identity_data,
                                                          tmp_path, run_cli):
    from peft import PeftModel

    run = train(plugin_set, identity_data, tmp_path, quantization_bit=4)
    out = tmp_path / "merged"
    result = run_cli("--plugin", tiny_plugin_file, "export", "--ckpt-dir", run.checkpoint,
                     "--merge-lora", "--output-dir", out)
    assert result.exit_code == 0, result.output
    assert "trained on a 4-bit base: merging it into the base loaded unquantized in fp32" in (
        result.stderr)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert json.loads((out / "sft_args.json").read_text())["quantization_bit"] == 0

    merged = AutoModelForCausalLM.from_pretrained(out)
    unquantized = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(run.checkpoint))
    inputs = AutoTokenizer.from_pretrained(out)("Who are you?", return_tensors="pt")
    torch.testing.assert_close(logits(merged, inputs), logits(unquantized.eval(), inputs),
                               rtol=1e-5, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert not torch.allclose(logits(merged, inputs), logits(base, inputs), atol=1e-4)
