"""Other tools' flags and config keys (sdk/compat.py): an ms-swift sft.sh command line and a
LLaMA-Factory YAML config resolve through `sdk sft --dry-run` into the plan they mean, and
train; flags without effect say so; flags that cannot be honoured are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TYPE, only_run
from sdk import compat
from sdk.errors import SdkError

# seed 004's scripts/qwen_7b_chat/lora/sft.sh, as ms-swift's manual writes it, with the model
# and dataset swapped for local ones (appended by the tests) and a few more of its flags
SWIFT_SFT_SH = """
    --sft_type lora --template_type AUTO --dtype AUTO --train_dataset_sample -1
    --num_train_epochs 1 --max_length 2048 --quantization_bit 0 --lora_rank 8 --lora_alpha 32
    --lora_dropout_p 0. --lora_target_modules ALL --gradient_checkpointing true --batch_size 1
    --weight_decay 0. --learning_rate 1e-4 --gradient_accumulation_steps 16 --max_grad_norm 0.5
    --warmup_ratio 0.03 --eval_steps 100 --save_steps 100 --save_total_limit 2
    --logging_steps 10 --use_flash_attn false --push_to_hub false
    --hub_model_id qwen-7b-chat-lora --hub_private_repo true --tuner_backend swift
    --dataset_test_ratio 0.5 --model_revision master --ignore_args_error true
""".split()

# LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml, model and data swapped for local
LLAMA_FACTORY_YAML = """\
### model
model_name_or_path: {model}
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity
dataset_dir: {data}
template: qwen
cutoff_len: 2048
max_samples: 3
overwrite_cache: true
preprocessing_num_workers: 1
dataloader_num_workers: 0

### output
output_dir: {output}
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
save_only_model: false
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
ddp_timeout: 180000000
resume_from_checkpoint: null

### eval
val_size: 0.34
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""


@pytest.fixture
def sft(run_cli, tiny_plugin_file, tmp_path):
    def run(*flags):
        return run_cli("--plugin", tiny_plugin_file, "sft", *flags)

    return run


def planned(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["plan"]["arguments"]


def test_an_ms_swift_sft_sh_plans_as_it_means_and_trains(sft, identity_data, tiny_model_dir,
                                                         tmp_path):
    flags = [*SWIFT_SFT_SH, "--model_type", TINY_MODEL_TYPE, "--model_id_or_path",
             str(tiny_model_dir), "--dataset", str(identity_data),
             "--output_dir", str(tmp_path / "out")]
    result = sft(*flags, "--dry-run", "--json")
    plan = planned(result)
    assert plan["template"] == "chatml"  # AUTO: the model type's
    assert plan["split_dataset_ratio"] == 0.5 and plan["lora_dropout"] == 0.0
    assert plan["attn_impl"] == "sdpa" and plan["lora_target_modules"] == ["ALL"]
    assert plan["dataset"] == [str(identity_data)] and plan["gradient_checkpointing"] is True
    lines = result.stderr.splitlines()
    for flag in ("tuner_backend", "model_revision", "ignore_args_error", "train_dataset_sample"):
        assert sum(line.startswith(f"[sdk] {flag} has no effect here: ") for line in lines) == 1
    assert ("read as sdk's options: template_type AUTO -> template (the default); "
            "lora_dropout_p 0. -> lora-dropout 0.") in result.stderr

    sampled = compat.translate({"train_dataset_sample": "2"}, "sft", "The command line")
    assert compat.finish({**sampled, "dataset": ["a", "b#5"]})["dataset"] == ["a#2", "b#5"]

    result = sft(*flags, "--max_steps", "1", "--dataset_test_ratio", "0")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path / "out")
    saved = json.loads((run / "sft_args.json").read_text())
    assert saved["lora_dropout"] == 0.0 and saved["attn_impl"] == "sdpa"
    assert (run / "checkpoint-1").is_dir()


def test_a_llama_factory_config_plans_as_it_means(sft, tiny_model_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "identity.json").write_text(json.dumps([
        {"instruction": question, "input": "", "output": "I am Tiny."}
        for question in ("Who are you?", "Your name?", "Introduce yourself.", "Hi?")]))
    (data / "dataset_info.json").write_text(json.dumps({"identity": {
        "file_name": "identity.json"}}))
    config = tmp_path / "llama3_lora_sft.yaml"
    config.write_text(LLAMA_FACTORY_YAML.format(model=tiny_model_dir, data=data,
                                                output=tmp_path / "saves"))
    result = sft("--config", config, "--model-type", TINY_MODEL_TYPE, "--dry-run", "--json")
    plan = planned(result)
    assert plan["model_id_or_path"] == str(tiny_model_dir) and plan["template"] == "chatml"
    assert plan["sft_type"] == "lora" and plan["lora_target_modules"] == ["all"]
    assert plan["dataset"] == ["identity"] and plan["max_samples"] == 3  # the first 3 rows
    assert sum(source["rows"] for split in json.loads(result.stdout)["data"]["splits"]
               for source in split["sources"]) == 3
    assert plan["dataset_info"] == str(data / "dataset_info.json")
    assert plan["split_dataset_ratio"] == 0.34 and plan["max_length"] == 2048
    assert plan["batch_size"] == 1 and plan["gradient_accumulation_steps"] == 8
    assert plan["only_save_model"] is False and plan["num_train_epochs"] == 3.0
    assert plan["output_dir"] == str(tmp_path / "saves") and plan["output_dir_as_run"]
    assert plan["overwrite_output_dir"] is True  # ours too (tests/test_output_dir.py)
    for key in ("stage", "do_train", "overwrite_cache", "plot_loss",
                "ddp_timeout", "per_device_eval_batch_size", "eval_strategy"):
        assert f"[sdk] {key} has no effect here: " in result.stderr, key

    # the same keys as llamafactory-cli flags
    result = sft("--model_name_or_path", tiny_model_dir, "--model-type", TINY_MODEL_TYPE,
                 "--stage", "sft", "--do_train", "--finetuning_type", "lora",
                 "--dataset_dir", data, "--dataset", "identity", "--template", "qwen",
                 "--cutoff_len", "64", "--output_dir", tmp_path / "saves", "--fp16", "false",
                 "--dry-run", "--json")
    plan = planned(result)
    assert plan["template"] == "chatml" and plan["max_length"] == 64
    assert "[sdk] do_train has no effect here" in result.stderr


def test_model_names_of_other_tools_resolve_to_registered_model_types(plugin_set):
    from sdk.registry import Registry

    registry: Registry = plugin_set.registry
    known = registry.names("models")
    for theirs, ours in {"qwen1half-7b-chat": "qwen1.5-7b-chat",
                         "qwen2_5-7b-instruct": "qwen2.5-7b-instruct",
                         "qwen-7b-chat-int4": "qwen-7b-chat-int4",
                         "llama3_1-8b-instruct": "llama3.1-8b-instruct",
                         "internlm2_5-7b-chat": "internlm2.5-7b-chat",
                         "mistral-7b-instruct-v3": "mistral-7b-instruct-v0.3",
                         "mixtral-moe-7b-instruct": "mixtral-8x7b-instruct-v0.1"}.items():
        assert ours in known
        assert compat.resolve_names({"model_type": theirs}, registry)["model_type"] == ours
    assert set(compat.MODEL_TYPES.values()) <= set(known)
    templates = registry.names("templates")
    assert {name for name in compat.LF_TEMPLATES.values() if name} <= set(templates)
    spec = registry.get("models", "qwen2.5-7b-instruct")
    hub_id = spec.hub_ids["huggingface"]
    assert compat.resolve_names({"#model_name_or_path": hub_id}, registry) == {
        "model_type": "qwen2.5-7b-instruct"}
    assert compat.resolve_names({"#model_name_or_path": "THUDM/chatglm3-6b"}, registry) == {
        "model_type": "chatglm3-6b"}  # the organization is zai-org now
    with pytest.raises(SdkError, match="nor a hub id of --model-type qwen-7b-chat"):
        compat.resolve_names({"#model_name_or_path": hub_id, "model_type": "qwen-7b-chat"},
                             registry)
    # ms-swift 3.x: --model a hub id, --model_type its family, its template and dataset names
    assert compat.resolve_names({"#model": hub_id, "model_type": "qwen2_5", "template":
                                 "qwen2_5", "dataset": ["AI-ModelScope/alpaca-gpt4-data-zh#500",
                                                        "swift/self-cognition#5"]},
                                registry) == {"model_type": "qwen2.5-7b-instruct",
                                              "template": "qwen2.5",
                                              "dataset": ["alpaca-zh#500", "self-cognition#5"]}
    # a family whose plugin is named otherwise (chatglm's glm4_0414)
    assert compat.resolve_names({"#model": "ZhipuAI/GLM-4-9B-0414", "model_type": "glm4_0414"},
                                registry) == {"model_type": "glm4-9b-0414"}
    with pytest.raises(SdkError, match="--model-type qwen2_5 names a family .* give one of "
                                       "qwen2.5-0.5b-instruct, "):
        compat.resolve_names({"#model": "/models/Qwen2.5-7B-Instruct", "model_type": "qwen2_5"},
                             registry)
    assert compat.translate({"adapters": "output/v0/checkpoint-5"}, "infer", "The command "
                            "line") == {"ckpt_dir": "output/v0/checkpoint-5"}
    # LLaMA-Factory's current examples: Qwen3-4B-Instruct-2507 with its qwen3_nothink template
    assert compat.resolve_names({"#model_name_or_path": "Qwen/Qwen3-4B-Instruct-2507",
                                 "template": "qwen3_nothink"}, registry) == {
        "model_type": "qwen3-4b-instruct-2507", "template": "qwen3-instruct-2507"}
    with pytest.raises(SdkError, match="'Qwen/Qwen3-Next-80B-A3B-Instruct' is no folder here "
                                       "and no registered model type's hub id.*--model-type"):
        compat.resolve_names({"#model_name_or_path": "Qwen/Qwen3-Next-80B-A3B-Instruct"},
                             registry)


@pytest.mark.parametrize("flags, message", [
    (["--stage", "dpo"], "LLaMA-Factory's stage 'dpo': sdk sft trains supervised fine-tuning"),
    (["--train_dataset_mix_ratio", "2.0"], "general-purpose datasets"),
    (["--model_revision", "v1.0.1"], "pins revision 'v1.0.1'"),
    (["--evaluation_strategy", "epoch"], "every N steps only"),
    (["--metric_for_best_model", "rouge-l"], "lowest eval loss"),
    (["--dataset_seed", "7"], "dataset_seed 7 differs from --seed 42"),
    (["--train_dataset_mix_ratio", "lots"], "ms-swift's train_dataset_mix_ratio expected a "
                                            "number, got 'lots'."),
    (["--lora_dropout_p", "0.1", "--lora-dropout", "0.2"], "--lora-dropout 0.2 and another "
                                                           "tool's flag that means 0.1"),
])
def test_what_cannot_be_honoured_is_refused_with_the_reason(refused_sft, flags, message):
    assert message in refused_sft(*flags)


def test_config_keys_unknown_to_both_are_named_with_a_suggestion(sft, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("lora_rnk: 8\nlr: 1.0e-4\nstage: sft\n")
    result = sft("--config", config, "--dry-run")
    assert result.exit_code == 1
    assert ("unknown options 'lora_rnk' (did you mean 'lora_rank'?), 'lr' (here: "
            "learning_rate)") in result.stderr


def test_sdk_infer_takes_other_tools_infer_flags(run_cli, tiny_plugin_file, finished_lora_run,
                                                 tiny_model_dir, tmp_path):
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt_dir", finished_lora_run,
                     "--sft_type", "lora", "--use_streamer", "false", "--eval_human", "true",
                     "--query", "Who are you?", "--max_new_tokens", "2")
    assert result.exit_code == 0, result.output
    assert "[sdk] sft_type has no effect here: the checkpoint records its tuner." in \
        result.stderr
    assert "[sdk] eval_human has no effect here" in result.stderr
    assert "use_streamer false -> stream false" in result.stderr

    # LLaMA-Factory's examples/inference/llama3_lora_sft.yaml, model and adapter swapped
    config = tmp_path / "llama3_lora_sft.yaml"
    config.write_text(f"model_name_or_path: {tiny_model_dir}\nadapter_name_or_path: "
                      f"{finished_lora_run}\ntemplate: qwen\ninfer_backend: huggingface\n"
                      "trust_remote_code: true\nfinetuning_type: lora\n")
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--config", config, "--query",
                     "Who are you?", "--max_new_tokens", "2")
    assert result.exit_code == 0, result.output
    assert "adapter_name_or_path" in result.stderr and "template qwen -> template" in \
        result.stderr

    # seed 004's infer.sh: the held-out rows of the run's dataset, predicted
    result = run_cli("--plugin", tiny_plugin_file, "infer", "--ckpt_dir", finished_lora_run,
                     "--eval_human", "false", "--dataset", "alpaca-zh", "--dataset_test_ratio",
                     "0.01", "--max_length", "2048", "--max_new_tokens", "2")
    assert "eval_human false predicts the held-out rows of --dataset alpaca-zh" in \
        result.stderr
    assert "eval_human false -> val-dataset-from-run True." in result.stderr
    assert "[sdk] dataset_test_ratio has no effect here" in result.stderr
    assert result.exit_code == 1 and "held out no rows" in result.stderr  # this run's


def test_help_lists_only_sdks_own_flags_and_the_alias_page_is_current(run_cli):
    result = run_cli("sft", "--help")
    assert result.exit_code == 0
    assert "--lora_dropout_p" not in result.output and "template_type" not in result.output
    page = Path(__file__).parent.parent / "docs" / "compat.md"
    assert page.read_text(encoding="utf-8") == compat.markdown(), (
        "docs/compat.md is not sdk/compat.py's tables: regenerate it (see its first lines)")


def test_chatglm_efficient_tuning_commands_read_as_llama_factorys(sft, identity_data,
                                                                   tiny_model_dir, tmp_path):
    """Seed 000's training and prediction commands, model and data swapped for local ones."""
    common = ["--model-type", TINY_MODEL_TYPE, "--model_name_or_path", tiny_model_dir,
              "--dataset", identity_data, "--fp16"]
    result = sft("--do_train", *common, "--finetuning_type", "p_tuning", "--output_dir",
                 tmp_path / "out", "--per_device_train_batch_size", "4",
                 "--gradient_accumulation_steps", "4", "--lr_scheduler_type", "cosine",
                 "--logging_steps", "10", "--save_steps", "1000", "--learning_rate", "5e-5",
                 "--num_train_epochs", "3.0", "--dry-run", "--json")
    plan = planned(result)
    assert (plan["sft_type"], plan["batch_size"], plan["dtype"]) == ("ptuning", 4, "fp16")

    result = sft("--do_predict", *common, "--checkpoint_dir", tmp_path / "ckpt", "--output_dir",
                 tmp_path / "predictions", "--per_device_eval_batch_size", "8",
                 "--max_samples", "100000", "--predict_with_generate", "--dry-run")
    assert result.exit_code == 1
    assert "do_predict without do_train" in result.stderr
    assert "`sdk infer --ckpt-dir DIR --dataset D`" in result.stderr


@pytest.mark.parametrize("given, expected", [
    ({"deepspeed": "default-zero2", "sft_type": "p_tuning"},
     {"deepspeed": "zero2", "sft_type": "ptuning"}),
    ({"self_cognition_sample": "50", "dataset": ["a.jsonl"], "model_name": ["Tiny"],
      "model_author": ["Tests"]}, {"dataset": ["a.jsonl", "self-cognition#50"]}),
    ({"custom_train_dataset_path": "b.jsonl", "dataset": ["a.jsonl"], "lora_target_modules":
      ["DEFAULT"]}, {"dataset": ["a.jsonl", "b.jsonl"], "lora_target_modules": []}),
    ({"bf16": "true", "deepspeed_config_path": "ds.json", "preprocess_num_proc": "2"},
     {"dtype": "bf16", "deepspeed": "ds.json", "dataset_num_proc": 2}),
    ({"init_lora_weights": "pissa_niter_4"}, {"init_lora_weights": "pissa", "pissa_niter": 4}),
    ({"attn_impl": "flash_attn", "torch_dtype": "bfloat16", "target_modules": "all-linear"},
     {"attn_impl": "flash_attention_2", "dtype": "bf16", "lora_target_modules": ["all-linear"]}),
    ({"add_version": "false"}, {"output_dir_as_run": True}),
    ({"add_output_dir_suffix": "true"}, {"output_dir_as_run": False}),
    ({"val_dataset_sample": "10", "val_dataset": ["v.jsonl"], "load_best_model_at_end": "true",
      "quantization_method": "bnb", "quantization_bit": 4},
     {"val_dataset": ["v.jsonl#10"], "quantization_bit": 4}),
])
def test_ms_swift_values_read_as_ours(given, expected, plugin_set):
    from sdk.config import build_arguments
    from sdk.options import arguments_class

    registry = plugin_set.registry
    fields = {f for f in arguments_class(registry).__dataclass_fields__}
    ours = {key: value for key, value in given.items() if key in fields}
    foreign = {key: value for key, value in given.items() if key not in fields}
    arguments = build_arguments(arguments_class(registry), ours, None,
                                foreign, registry)
    assert {key: getattr(arguments, key) for key in expected} == expected


def test_llama_factory_reads_data_dataset_info_json_without_dataset_dir(tmp_path, monkeypatch):
    from sdk.config import SftArguments, build_arguments

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text("{}")
    monkeypatch.chdir(tmp_path)
    arguments = build_arguments(SftArguments, {"dataset": ["identity"]}, None,
                                {"stage": "sft"})
    assert arguments.dataset_info == str(tmp_path / "data" / "dataset_info.json")


def test_max_samples_takes_the_first_rows_as_llama_factory_does(plugin_set, identity_data,
                                                                tmp_path):
    from sdk.config import SftArguments
    from sdk.data.arrow import training_and_held_out

    arguments = SftArguments(dataset=[str(identity_data)], max_samples=2,
                             output_dir=str(tmp_path))
    train, _ = training_and_held_out(arguments, plugin_set.registry, None)
    assert train["where"] == [f"{identity_data}:1", f"{identity_data}:2"]


def test_val_dataset_sample_without_val_dataset_samples_the_held_out_split(
        sft, refused_sft, plugin_set, tiny_model_dir, tmp_path):
    """ms-swift holds out dataset_test_ratio of the data, then keeps val_dataset_sample rows
    of those (the others neither train nor evaluate)."""
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"query": f"Question {i}?", "response": "Yes."}) + "\n"
                            for i in range(10)))
    result = sft("--model_type", TINY_MODEL_TYPE, "--model_id_or_path", tiny_model_dir,
                 "--dataset", data, "--dataset_test_ratio", "0.5", "--val_dataset_sample", "2",
                 "--output_dir", tmp_path / "out", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "val_dataset_sample 2 -> NAME#N on --val-dataset, else --held-out-sample" in \
        result.stderr
    assert ("held out: 0.5 of it (--split-dataset-ratio), of which 2 rows sampled "
            "(--held-out-sample)") in result.stdout
    assert "  train: 5 rows" in result.stdout and "  held-out: 2 rows" in result.stdout

    assert "none are held out: ms-swift holds out dataset_test_ratio 0.01 by default" in \
        refused_sft("--val_dataset_sample", "2")

    from sdk.config import SftArguments
    from sdk.data.arrow import training_and_held_out

    def split(**sample):
        arguments = SftArguments(dataset=[str(data)], split_dataset_ratio=0.5,
                                 output_dir=str(tmp_path), **sample)
        return training_and_held_out(arguments, plugin_set.registry, None)

    train, held_out = split()
    sampled_train, sampled = split(held_out_sample=2)
    assert sampled_train["where"] == train["where"]  # the same training rows
    assert len(sampled) == 2 and set(sampled["where"]) < set(held_out["where"])


# ms-swift 3.x's examples/train/lora_sft.sh (its README's quick start), model and data swapped
# for local ones; 3.x renamed flags and values (--model, --tuner_type, --torch_dtype,
# --target_modules all-linear, hub dataset ids with #N)
SWIFT3_LORA_SFT_SH = """
    --tuner_type lora --torch_dtype bfloat16 --num_train_epochs 1
    --per_device_train_batch_size 1 --per_device_eval_batch_size 1 --learning_rate 1e-4
    --lora_rank 8 --lora_alpha 32 --target_modules all-linear --gradient_accumulation_steps 16
    --eval_steps 50 --save_steps 50 --save_total_limit 2 --logging_steps 5 --max_length 2048
    --warmup_ratio 0.05 --dataloader_num_workers 4 --model_author swift
    --model_name swift-robot
""".split()


def test_an_ms_swift_3_lora_sft_sh_plans_as_it_means(sft, identity_data, tiny_model_dir,
                                                      tmp_path):
    result = sft("--model", tiny_model_dir, "--model_type", TINY_MODEL_TYPE,
                 "--dataset", f"{identity_data}#3", "swift/self-cognition#5",
                 *SWIFT3_LORA_SFT_SH, "--system", "You are a helpful assistant.",
                 "--output_dir", tmp_path / "output", "--split_dataset_ratio", "0.25",
                 "--dataset_num_proc", "1", "--template", "qwen2_5", "--attn_impl",
                 "sdpa", "--dry-run", "--json")
    plan = planned(result)
    assert plan["model_id_or_path"] == str(tiny_model_dir) and plan["dtype"] == "bf16"
    assert plan["sft_type"] == "lora" and plan["lora_target_modules"] == ["all-linear"]
    assert plan["dataset"] == [f"{identity_data}#3", "self-cognition#5"]
    assert plan["template"] == "qwen2.5" and plan["attn_impl"] == "sdpa"
    assert plan["system"] == "You are a helpful assistant."
    assert (plan["model_name"], plan["model_author"]) == (["swift-robot"], ["swift"])
    assert (plan["split_dataset_ratio"], plan["dataloader_num_workers"]) == (0.25, 4)


@pytest.mark.parametrize("environment, printed", [
    ({}, True), ({"RANK": "0", "LOCAL_RANK": "0"}, True), ({"RANK": "1", "LOCAL_RANK": "1"}, False),
    ({"RANK": "2", "LOCAL_RANK": "0"}, False), ({"LOCAL_RANK": "1"}, False)])
def test_under_torchrun_only_rank_0_says_how_other_tools_flags_were_read(
        environment, printed, monkeypatch, capsys):
    for name in ("RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    values = compat.translate({"lora_dropout_p": "0.1", "tuner_backend": "peft"}, "sft",
                              "The command line")
    assert values == {"lora_dropout": "0.1"}  # every process reads them alike
    lines = capsys.readouterr().err.splitlines()
    assert lines == ([
        "[sdk] tuner_backend has no effect here: every adapter here is trained with peft.",
        "[sdk] read as sdk's options: lora_dropout_p 0.1 -> lora-dropout 0.1."] if printed
        else [])
