"""The built-in tuners beyond lora/full: each trains a few steps and reloads to equal logits."""

import json
import math
import warnings
from contextlib import nullcontext

import pytest
import torch

from conftest import TINY_MODEL_TYPE
from sdk.errors import SdkError
from sdk.testing import AnyTunerArguments, train_and_reload


@pytest.mark.parametrize("sft_type, adapter_setting", [
    ("dora", ("use_dora", True)),
    ("rslora", ("use_rslora", True)),
    ("ia3", ("peft_type", "IA3")),
])
def test_peft_tuners_train_and_reload(plugin_set, tiny_model_dir, identity_data, tmp_path,
                                      sft_type, adapter_setting):
    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                                identity_data, tmp_path, sft_type=sft_type)
    config = json.loads((reloaded.result.checkpoint / "adapter_config.json").read_text())
    key, value = adapter_setting
    assert config[key] == value
    assert reloaded.saved["sft_type"] == sft_type


def test_freeze_trains_only_the_last_layers(plugin_set, tiny_model_dir, identity_data,
                                            tmp_path):
    from transformers import AutoModelForCausalLM

    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                                identity_data, tmp_path, sft_type="freeze",
                                freeze_trainable_layers=1, learning_rate=1e-2)
    assert (reloaded.result.checkpoint / "model.safetensors").is_file()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).model
    trained = reloaded.model.model
    first, last = (lambda m: m.layers[0].mlp.down_proj.weight), (
        lambda m: m.layers[-1].mlp.down_proj.weight)
    assert torch.equal(first(base), first(trained))  # frozen
    assert not torch.equal(last(base), last(trained))  # trained
    assert torch.equal(base.embed_tokens.weight, trained.embed_tokens.weight)


def test_freeze_with_nothing_to_train_is_an_error(plugin_set, tiny_model_dir, identity_data,
                                                  tmp_path):
    with pytest.raises(SdkError, match="found nothing to train"):
        train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir, identity_data,
                         tmp_path, sft_type="freeze", freeze_trainable_layers=0)


def test_tuners_are_listed_with_a_description(run_cli):
    rows = {row["name"]: row for row in json.loads(run_cli("tuners", "--json").stdout)}
    assert {"lora", "qlora", "dora", "rslora", "adalora", "ia3", "prefix", "ptuning", "prompt",
            "freeze", "full"} <= set(rows)
    assert all(row["description"] for row in rows.values())


def test_training_continues_from_a_saved_adapter_in_either_file_layout(
        plugin_set, tiny_model_dir, identity_data, tmp_path, capsys):
    from safetensors.torch import load_file

    from sdk.config import SftArguments
    from sdk.train.sft import run_sft

    first = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                             identity_data, tmp_path / "first")
    older = tmp_path / "older-adapter"  # as Chinese-Vicuna / alpaca-lora saved adapters
    older.mkdir()
    (older / "adapter_config.json").write_text(
        (first.result.checkpoint / "adapter_config.json").read_text())
    torch.save(load_file(first.result.checkpoint / "adapter_model.safetensors"),
               older / "pytorch_model.bin")
    for adapter in (first.result.checkpoint, older):
        # a learning rate of ~0: the continued model must be the adapter's model
        result = run_sft(SftArguments(
            model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
            dataset=[str(identity_data)], max_steps=1, batch_size=2,
            gradient_accumulation_steps=1, learning_rate=1e-30, warmup_ratio=0.0,
            output_dir=str(tmp_path / "continued"), adapter=str(adapter)),
            plugin_set.registry)
        assert any(p.requires_grad for p in result.model.parameters())
        assert "[sdk] --adapter: training on with its own settings (rank 8, targets " \
            in capsys.readouterr().err
        with torch.no_grad():
            inputs = first.inputs.to(result.model.device)
            torch.testing.assert_close(result.model.eval()(**inputs).logits,
                                       first.model(**inputs).logits, rtol=1e-5, atol=1e-5)


def test_an_adapter_for_another_model_or_tuner_is_refused(plugin_set, tiny_model_dir,
                                                          identity_data, tmp_path):
    from sdk.train.sft import run_sft

    def sft(**overrides):
        settings = dict(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                        dataset=[str(identity_data)], max_steps=1,
                        output_dir=str(tmp_path / "out"))
        return run_sft(AnyTunerArguments(**{**settings, **overrides}), plugin_set.registry)

    with pytest.raises(SdkError, match="has no adapter_config.json"):
        sft(adapter=str(tmp_path))
    with pytest.raises(SdkError, match="--adapter '.*missing' is not a folder"):
        sft(adapter=str(tmp_path / "missing"))
    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 4, "lora_alpha": 8,
         "target_modules": ["q_proj"]}))
    torch.save({"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
                torch.zeros(4, 999)}, alien / "adapter_model.bin")
    with pytest.raises(SdkError, match="does not fit this base model"):
        sft(adapter=str(alien))
    with pytest.raises(SdkError, match="--sft-type full does not train one"):
        sft(adapter=str(alien), sft_type="full")


def test_adalora_prunes_ranks_to_the_target_budget_and_reloads(plugin_set, tiny_model_dir,
                                                              identity_data, tmp_path):
    from safetensors.torch import load_file

    # 4 rows, 2 a step, 3 epochs: the schedule comes from the Trainer's 6 steps
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                                    identity_data, tmp_path, sft_type="adalora", max_steps=-1,
                                    num_train_epochs=3, save_steps=6, adalora_init_rank=4,
                                    adalora_target_rank=2)
    assert not [w for w in caught if "rank_pattern" in str(w.message)]  # a false alarm of peft
    config = json.loads((reloaded.result.checkpoint / "adapter_config.json").read_text())
    assert (config["total_step"], config["tinit"], config["tfinal"]) == (6, 0, 1)
    kept = {name: sum(mask) for name, mask in config["rank_pattern"].items()}
    assert len(kept) == 14  # q k v o gate up down in 2 layers
    assert sum(kept.values()) == 2 * len(kept)  # the target budget: an average rank of 2
    assert len(set(kept.values())) > 1  # allocated unevenly, where the scores put it
    weights = load_file(reloaded.result.checkpoint / "adapter_model.safetensors")
    saved_ranks = {name: tensor.shape[0] for name, tensor in weights.items()
                   if name.endswith("lora_E")}
    assert sorted(saved_ranks.values()) == sorted(kept.values())  # pruned ranks are not saved


@pytest.mark.parametrize("resume_at", [6, 18])  # while ranks are pruned; after the last prune
def test_adalora_resumed_mid_run_trains_like_the_uninterrupted_run(plugin_set, tiny_model_dir,
                                                                   identity_data, tmp_path,
                                                                   resume_at):
    import shutil

    from safetensors.torch import load_file

    from sdk.runs.run_dir import checkpoint_step
    from sdk.train.sft import run_sft
    from sdk.tuners.adalora import STATE_FILE

    # 20 steps: ranks fixed for 2, pruned until step 16, kept from 16 (tinit 2, tfinal 4)
    settings = dict(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                    dataset=[str(identity_data)], sft_type="adalora", max_steps=20,
                    batch_size=2, gradient_accumulation_steps=1, save_steps=3,
                    save_total_limit=0, learning_rate=1e-2, adalora_init_rank=4,
                    adalora_target_rank=2, output_dir=str(tmp_path / "whole"))
    whole = run_sft(AnyTunerArguments(**settings), plugin_set.registry)
    cut = tmp_path / "cut"
    shutil.copytree(whole.run_dir, cut)
    for checkpoint in cut.glob("checkpoint-*"):
        if checkpoint_step(checkpoint) > resume_at:
            shutil.rmtree(checkpoint)
    resumed = run_sft(AnyTunerArguments(**{**settings, "resume_from_checkpoint": str(
        cut / f"checkpoint-{resume_at}")}), plugin_set.registry)

    later = [c.name for c in whole.run_dir.glob("checkpoint-*") if checkpoint_step(c) > resume_at]
    assert later
    for name in later:  # the full adapter, the ranks' importance scores, the rank pattern
        expected = torch.load(whole.run_dir / name / STATE_FILE, weights_only=True)
        torch.testing.assert_close(torch.load(resumed.run_dir / name / STATE_FILE,
                                              weights_only=True), expected, rtol=0, atol=0)
    config = json.loads((whole.checkpoint / "adapter_config.json").read_text())
    assert config["rank_pattern"] == json.loads(
        (resumed.checkpoint / "adapter_config.json").read_text())["rank_pattern"]
    weights = load_file(whole.checkpoint / "adapter_model.safetensors")
    resumed_weights = load_file(resumed.checkpoint / "adapter_model.safetensors")
    assert weights.keys() == resumed_weights.keys()
    for name, value in weights.items():  # cut to the kept ranks, as peft saves an adapter
        assert torch.equal(resumed_weights[name], value), name


def test_an_adalora_checkpoint_without_its_state_says_to_continue_its_adapter(
        plugin_set, tiny_model_dir, identity_data, tmp_path):
    import shutil

    from sdk.errors import SdkError
    from sdk.train.sft import run_sft
    from sdk.tuners.adalora import STATE_FILE

    settings = dict(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                    dataset=[str(identity_data)], sft_type="adalora", max_steps=10,
                    batch_size=2, save_steps=6, learning_rate=1e-2, adalora_init_rank=4,
                    adalora_target_rank=2)
    run = run_sft(AnyTunerArguments(**settings, output_dir=str(tmp_path / "a")),
                  plugin_set.registry)
    checkpoint = run.run_dir / "checkpoint-6"
    (checkpoint / STATE_FILE).unlink()  # as saved before the file existed: ranks already cut
    shutil.rmtree(run.run_dir / "checkpoint-10")
    with pytest.raises(SdkError, match=f"cannot resume from it.*--adapter {checkpoint}"):
        run_sft(AnyTunerArguments(**settings, output_dir=str(tmp_path / "a"),
                                  resume_from_checkpoint=str(checkpoint)), plugin_set.registry)
    # the file is resume state only: none without the optimizer either
    plain = run_sft(AnyTunerArguments(**{**settings, "max_steps": 2, "save_steps": 2},
                                      only_save_model=True, output_dir=str(tmp_path / "b")),
                    plugin_set.registry)
    assert not (plain.checkpoint / STATE_FILE).exists()


@pytest.mark.parametrize("flags, message", [
    (dict(adalora_target_rank=16), "--adalora-target-rank 16 is above --adalora-init-rank 12"),
    (dict(adalora_tinit=1, adalora_tfinal=1), "leave fewer than 2 of the 2 training steps"),
])
def test_adalora_settings_are_checked(plugin_set, tiny_model_dir, identity_data, tmp_path,
                                      flags, message):
    with pytest.raises(SdkError, match=message):
        train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir, identity_data,
                         tmp_path, sft_type="adalora", **flags)


@pytest.mark.parametrize("flags, bits, layer", [
    ({}, 4, "Linear4bit"), ({"quantization_bit": 8}, 8, "Linear8bitLt")])
def test_qlora_quantizes_the_base_by_default(plugin_set, tiny_model_64, identity_data, tmp_path,
                                             flags, bits, layer):
    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_64,
                                identity_data, tmp_path, sft_type="qlora", **flags)
    assert reloaded.saved["quantization_bit"] == bits  # so `sdk infer` quantizes it again
    attention = reloaded.model.base_model.model.model.layers[0].self_attn
    assert type(attention.q_proj.base_layer).__name__ == layer


def test_a_tuner_missing_a_package_says_what_to_install(run_cli, tiny_plugin_file, identity_data,
                                                        monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "bitsandbytes"
                        else find_spec(name, *rest))
    # a model folder that does not exist: the package is checked before any model loads
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--model-id-or-path", "/nonexistent", "--dataset", identity_data,
                     "--sft-type", "qlora")
    assert result.exit_code == 1
    assert "--sft-type qlora needs bitsandbytes: pip install bitsandbytes" in result.stderr


def test_lora_modules_to_save_train_in_full_and_stay_tied(plugin_set, tiny_model_dir,
                                                          identity_data, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                                identity_data, tmp_path,
                                lora_modules_to_save=["embed_tokens", "lm_head"])
    weights = load_file(reloaded.result.checkpoint / "adapter_model.safetensors")
    assert any("embed_tokens" in name for name in weights)
    embeddings, head = reloaded.model.get_input_embeddings(), reloaded.model.get_output_embeddings()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).get_input_embeddings()
    assert not torch.equal(embeddings.weight, base.weight)  # trained in full
    # the tiny model ties lm_head to the embeddings: both use the one trained copy
    assert torch.equal(head.weight, embeddings.weight)


def mixed_precision_run(model_dir, tmp_path, peft_config, callbacks=()):
    """Two steps of bf16 training on the CPU (autocast standing in for a GPU's mixed
    precision) with adapters of ``peft_config`` on the tiny model in bf16: the trained model
    and its Trainer."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        TrainingArguments,
    )

    from sdk.train.trainer import SftTrainer

    rows = Dataset.from_list([{"input_ids": list(range(100, 100 + n)),
                               "labels": list(range(100, 100 + n))} for n in (12, 20, 7, 16)])
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16)
    model = get_peft_model(base, peft_config)
    arguments = TrainingArguments(
        output_dir=str(tmp_path), bf16=True, use_cpu=True, max_steps=2, learning_rate=1e-2,
        per_device_train_batch_size=2, save_strategy="no", report_to="none", logging_steps=1)
    trainer = SftTrainer(model=model, args=arguments, train_dataset=rows,
                         data_collator=DataCollatorForSeq2Seq(
                             AutoTokenizer.from_pretrained(model_dir), padding=True),
                         callbacks=list(callbacks), run_arguments={})
    trainer.train()
    return model, trainer


def test_under_mixed_precision_adapters_take_their_inputs_uncast_with_the_same_result(
        tiny_model_dir, tmp_path, monkeypatch):
    from peft import LoraConfig
    from transformers import TrainerCallback

    def train():
        casting = []

        class RecordCasting(TrainerCallback):
            def on_step_end(self, arguments, state, control, model, **kwargs):
                casting.append({module.cast_input_dtype_enabled for module in model.modules()
                                if hasattr(module, "lora_A")})

        model, trainer = mixed_precision_run(tiny_model_dir, tmp_path, LoraConfig(
            r=4, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
            [RecordCasting()])
        adapters = [module for module in model.modules() if hasattr(module, "lora_A")]
        assert adapters[0].lora_A["default"].weight.dtype == torch.float32  # bf16 inputs
        losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
        weights = {name: value.detach().clone() for name, value in model.named_parameters()
                   if value.requires_grad}
        return casting, {adapter.cast_input_dtype_enabled for adapter in adapters}, losses, weights

    casting, after, losses, weights = train()
    assert casting == [{False}, {False}] and after == {True}  # restored for generation
    with monkeypatch.context() as patched:  # peft's cast kept: each input copied to fp32 first
        patched.setattr("sdk.train.trainer.uncast_adapter_inputs",
                        lambda model, mixed_precision: nullcontext())
        casting, _, cast_losses, cast_weights = train()
    assert casting == [{True}, {True}] and losses == cast_losses and len(losses) == 2
    for name, value in weights.items():
        torch.testing.assert_close(value, cast_weights[name], rtol=0, atol=0)


@pytest.mark.parametrize("tuner", ["dora", "ia3", "adalora"])
def test_other_adapters_train_under_mixed_precision(tiny_model_dir, tmp_path, tuner):
    from peft import AdaLoraConfig, IA3Config, LoraConfig

    config = {"dora": LoraConfig(r=4, use_dora=True, lora_dropout=0.1, task_type="CAUSAL_LM",
                                 target_modules="all-linear"),
              "ia3": IA3Config(task_type="CAUSAL_LM"),  # its layers have no cast setting
              "adalora": AdaLoraConfig(task_type="CAUSAL_LM", total_step=10, init_r=8,
                                       target_r=4)}[tuner]
    _, trainer = mixed_precision_run(tiny_model_dir, tmp_path, config)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)


@pytest.mark.parametrize("init, flags", [("pissa", {}), ("pissa", {"pissa_niter": 2}),
                                         ("olora", {}), ("pissa", {"sft_type": "rslora"})])
def test_pissa_and_olora_checkpoints_are_plain_lora_for_the_unchanged_base(
        plugin_set, tiny_model_dir, identity_data, tmp_path, init, flags):
    from safetensors.torch import load_file

    from sdk.tuners.mutated_init import STATE_FILE

    # train_and_reload: `sdk infer`'s load (the published base + the checkpoint's adapter)
    # gives the logits of the trained model (the residual base + the trained adapter)
    reloaded = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                                identity_data, tmp_path, init_lora_weights=init, lora_rank=4,
                                **flags)
    config = json.loads((reloaded.result.checkpoint / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True
    assert config["lora_alpha"] == pytest.approx(32 * (2**0.5 if flags.get("sft_type") else 2))
    converted = load_file(reloaded.result.checkpoint / "adapter_model.safetensors")
    trained = load_file(reloaded.result.checkpoint / STATE_FILE)
    name = next(name for name in trained if "q_proj.lora_A" in name)
    assert trained[name].shape[0] == 4 and converted[name].shape[0] == 8
    assert reloaded.saved["init_lora_weights"] == init


def test_a_pissa_run_resumed_mid_run_trains_like_the_uninterrupted_run(
        plugin_set, tiny_model_dir, identity_data, tmp_path):
    import shutil

    from safetensors.torch import load_file

    from sdk.train.sft import run_sft
    from sdk.tuners.mutated_init import STATE_FILE

    settings = dict(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                    dataset=[str(identity_data)], init_lora_weights="pissa", max_steps=6,
                    batch_size=2, gradient_accumulation_steps=1, save_steps=3,
                    save_total_limit=0, learning_rate=1e-2, output_dir=str(tmp_path / "whole"))
    whole = run_sft(AnyTunerArguments(**settings), plugin_set.registry)
    cut = tmp_path / "cut"
    shutil.copytree(whole.run_dir, cut)
    shutil.rmtree(cut / "checkpoint-6")
    resumed = run_sft(AnyTunerArguments(**{**settings, "resume_from_checkpoint": str(
        cut / "checkpoint-3")}), plugin_set.registry)
    for file in (STATE_FILE, "adapter_model.safetensors"):
        expected = load_file(whole.checkpoint / file)
        got = load_file(resumed.checkpoint / file)
        assert got.keys() == expected.keys()
        for name, value in expected.items():
            torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6)


def test_a_pissa_checkpoint_saved_without_training_state_is_converted_and_not_resumable(
        plugin_set, tiny_model_dir, identity_data, tmp_path):
    from sdk.train.sft import run_sft
    from sdk.tuners.mutated_init import STATE_FILE

    settings = dict(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                    dataset=[str(identity_data)], init_lora_weights="olora", max_steps=2,
                    batch_size=2, save_steps=2, learning_rate=1e-2, lora_rank=4,
                    output_dir=str(tmp_path / "run"))
    run = run_sft(AnyTunerArguments(**settings, only_save_model=True), plugin_set.registry)
    assert not (run.checkpoint / STATE_FILE).exists()
    config = json.loads((run.checkpoint / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["init_lora_weights"] is True
    # its adapter trains on as plain LoRA on the published base
    continued = run_sft(AnyTunerArguments(**{**settings, "init_lora_weights": "default",
                                             "output_dir": str(tmp_path / "more")},
                                          adapter=str(run.checkpoint)), plugin_set.registry)
    assert json.loads((continued.checkpoint / "adapter_config.json").read_text())["r"] == 8


@pytest.mark.parametrize("flags, message", [
    (dict(quantization_bit=8), "a base quantized to 8 bits cannot give back exactly"),
    (dict(init_lora_weights="olora", pissa_niter=4), "--pissa-niter sets PiSSA's fast SVD"),
    (dict(lora_modules_to_save=["lm_head"]), "--lora-modules-to-save would not be saved"),
    (dict(adapter="somewhere"), "--adapter continues a saved one"),
    (dict(sft_type="dora"), "works with --sft-type lora or rslora, not dora"),
    (dict(sft_type="qlora"), "works with --sft-type lora or rslora, not qlora"),
])
def test_pissa_settings_it_cannot_train_with_are_refused_before_loading(
        plugin_set, identity_data, tmp_path, flags, message):
    from sdk.train.sft import run_sft

    arguments = AnyTunerArguments(**{
        "model_type": TINY_MODEL_TYPE, "model_id_or_path": "/nonexistent",
        "dataset": [str(identity_data)], "init_lora_weights": "pissa",
        "output_dir": str(tmp_path), **flags})
    with pytest.raises(SdkError, match=message):
        run_sft(arguments, plugin_set.registry)


def test_pissa_and_olora_start_as_the_base_model_without_dropout_by_default(
        plugin_set, tiny_model_dir, identity_data, tmp_path):
    from sdk.tuners.lora import lora_dropout

    settings = dict(model_type=TINY_MODEL_TYPE, dataset=[str(identity_data)])
    assert lora_dropout(AnyTunerArguments(**settings)) == 0.0  # the fast path's default
    assert lora_dropout(AnyTunerArguments(**settings, init_lora_weights="pissa")) == 0.0
    assert lora_dropout(AnyTunerArguments(**settings, init_lora_weights="olora",
                                          lora_dropout=0.1)) == 0.1
    # before any step (learning rate 0 at step 1) the model trains as the base model
    losses = {}
    for init in ("default", "olora"):
        run = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                               identity_data, tmp_path / init, init_lora_weights=init,
                               logging_steps=1, warmup_ratio=0.5)
        assert run.saved["lora_dropout"] == 0.0  # as applied
        records = (run.result.run_dir / "logging.jsonl").read_text().splitlines()
        losses[init] = next(json.loads(line)["loss"] for line in records if "loss" in line)
    assert losses["olora"] == pytest.approx(losses["default"], rel=1e-5)


def test_a_pissa_run_resumes_only_with_its_own_start(plugin_set, tiny_model_dir, identity_data,
                                                     tmp_path):
    from sdk.train.sft import run_sft

    settings = dict(model_type=TINY_MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                    dataset=[str(identity_data)], init_lora_weights="pissa", max_steps=4,
                    batch_size=2, save_steps=2, output_dir=str(tmp_path))
    run = run_sft(AnyTunerArguments(**{**settings, "max_steps": 2}), plugin_set.registry)
    for changed, message in [(dict(init_lora_weights="default"),
                              "--init-lora-weights 'pissa' there, 'default' now"),
                             (dict(pissa_niter=2), "--pissa-niter 0 there, 2 now")]:
        with pytest.raises(SdkError, match=message):
            run_sft(AnyTunerArguments(**{**settings, **changed},
                                      resume_from_checkpoint=str(run.run_dir)), plugin_set.registry)


