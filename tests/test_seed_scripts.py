"""The seeds' command lines as they are written, model and data swapped for local ones:
Chinese-LLaMA-Alpaca-2's scripts/training/run_sft.sh (seed 002) and Chinese-Vicuna's
`python finetune.py --data_path merge.json --test_size 2000` (seed 001), through `sdk sft`
(sdk/compat.py reads their flags)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from conftest import TINY_MODEL_TYPE, TOKENIZERS
from sdk import compat
from sdk.errors import SdkError

# run_sft.sh's launch line after `torchrun --nnodes 1 --nproc_per_node 1
# run_clm_sft_with_peft.py`, its variables given the script's values; {...}: the paths the
# test swaps in, {steps}: training_steps (100 in the script), {workers}: 8 in the script (here 1:
# eight tokenizing processes for seven rows take ~20 s on a 2-core CI machine; 8 is read in
# test_other_values_of_the_seeds_flags)
RUN_SFT_SH = """
    --deepspeed {deepspeed} --model_name_or_path {model} --tokenizer_name_or_path {tokenizer}
    --dataset_dir {data} --validation_split_percentage 0.001 --per_device_train_batch_size 1
    --per_device_eval_batch_size 1 --do_train --do_eval --seed 12345 --fp16
    --max_steps {steps} --lr_scheduler_type cosine --learning_rate 1e-4 --warmup_ratio 0.03
    --weight_decay 0 --logging_strategy steps --logging_steps 10 --save_strategy steps
    --save_total_limit 3 --evaluation_strategy steps --eval_steps 250 --save_steps 500
    --gradient_accumulation_steps 1 --preprocessing_num_workers {workers} --max_seq_length 512
    --output_dir {output} --overwrite_output_dir --ddp_timeout 30000 --logging_first_step True
    --lora_rank 8 --lora_alpha 32
    --trainable q_proj,v_proj,k_proj,o_proj,gate_proj,down_proj,up_proj
    --modules_to_save embed_tokens,lm_head --lora_dropout 0.05 --torch_dtype float16
    --validation_file {validation} --peft_path {peft} --gradient_checkpointing
    --ddp_find_unused_parameters False
"""
# scripts/training/ds_zero2_no_offload.json as the Chinese-LLaMA-Alpaca projects' docs quote it
# (fp16's min_loss_scale 1e-10 included)
DS_ZERO2_NO_OFFLOAD = {
    "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 100,
             "initial_scale_power": 16, "hysteresis": 2, "min_loss_scale": 1e-10},
    "zero_optimization": {"stage": 2, "allgather_partitions": True,
                          "allgather_bucket_size": 1e8, "overlap_comm": True,
                          "reduce_scatter": True, "reduce_bucket_size": 1e8,
                          "contiguous_gradients": True},
    "gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "steps_per_print": 2000,
    "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
    "wall_clock_breakdown": False}


def alpaca(path: Path, rows: int, start: int = 0) -> Path:
    path.write_text(json.dumps([
        {"instruction": f"Question {i}?", "input": "" if i % 2 else "some context",
         "output": f"Answer {i}."} for i in range(start, start + rows)], ensure_ascii=False))
    return path


@pytest.fixture
def sft(run_cli, tiny_plugin_file):
    def run(*flags):
        return run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                       *flags)

    return run


@pytest.fixture
def run_sft_sh(tmp_path, tiny_model_dir):
    """run_sft.sh's flags with a folder of two alpaca .json files, a validation file, the
    tiny model (its own folder as the tokenizer) and the repository's deepspeed file."""
    data = tmp_path / "sft_data"
    data.mkdir()
    alpaca(data / "part1.json", 3)
    alpaca(data / "part2.json", 2, start=3)
    (data / "notes.txt").write_text("not data")
    deepspeed_file = tmp_path / "ds_zero2_no_offload.json"
    deepspeed_file.write_text(json.dumps(DS_ZERO2_NO_OFFLOAD))

    def flags(peft: Path | None = None, steps: int = 100, deepspeed: bool = True,
              **swapped) -> list[str]:
        paths = dict(deepspeed=deepspeed_file, model=tiny_model_dir, tokenizer=tiny_model_dir,
                     data=data, validation=alpaca(tmp_path / "dev.json", 2, start=10),
                     peft=peft, output=tmp_path / "output_dir", steps=steps, workers=1)
        words = RUN_SFT_SH.format(**{**paths, **swapped}).split()
        # the seed: "remove --peft_path from the script" for a new adapter
        for flag, keep in (("--peft_path", peft), ("--deepspeed", deepspeed)):
            if not keep:
                at = words.index(flag)
                del words[at:at + 2]
        return words

    return flags


def plan_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_chinese_llama_alpaca_2_run_sft_sh_plans_as_it_means(sft, run_sft_sh, tmp_path,
                                                             tiny_model_dir, finished_lora_run):
    adapter = finished_lora_run / "checkpoint-2"
    # the repository's DeepSpeed file sets a value that DeepSpeed no longer takes: named
    deepspeed = tmp_path / "ds_zero2_no_offload.json"
    result = sft(*run_sft_sh(peft=adapter), "--dry-run")
    assert result.exit_code == 1
    assert (f"--deepspeed {deepspeed}: DeepSpeed " in result.stderr and "does not take its "
            "fp16.min_loss_scale 1e-10 (Input should be a valid integer") in result.stderr
    shipped = json.loads(deepspeed.read_text())
    shipped["fp16"]["min_loss_scale"] = 1
    deepspeed.write_text(json.dumps(shipped))

    result = sft(*run_sft_sh(peft=adapter), "--dry-run", "--json")
    shown = plan_of(result)
    plan = shown["plan"]["arguments"]
    data = tmp_path / "sft_data"
    assert plan["dataset"] == [str(data / "part1.json"), str(data / "part2.json")]
    assert plan["val_dataset"] == [str(tmp_path / "dev.json")]
    assert plan["model_id_or_path"] == str(tiny_model_dir) and plan["adapter"] == str(adapter)
    assert plan["lora_target_modules"] == ["q_proj", "v_proj", "k_proj", "o_proj",
                                           "gate_proj", "down_proj", "up_proj"]
    assert plan["lora_modules_to_save"] == ["embed_tokens", "lm_head"]
    assert (plan["dtype"], plan["max_length"], plan["seed"], plan["max_steps"]) == (
        "fp16", 512, 12345, 100)
    assert plan["deepspeed"] == str(deepspeed)
    assert plan["output_dir"] == str(tmp_path / "output_dir")
    # HF Trainer's output_dir: the run goes into it as given
    assert plan["output_dir_as_run"] is True and plan["overwrite_output_dir"] is True
    rows = {split["split"]: sum(source["rows"] for source in split["sources"])
            for split in shown["data"]["splits"]}
    assert rows == {"train": 5, "held-out": 2}, shown["data"]["splits"]
    for flag in ("tokenizer_name_or_path", "validation_split_percentage", "do_eval",
                 "logging_strategy", "logging_first_step", "ddp_timeout",
                 "ddp_find_unused_parameters", "save_strategy",
                 "evaluation_strategy", "per_device_eval_batch_size"):
        assert f"[sdk] {flag} has no effect here: " in result.stderr, flag
    assert plan["gradient_checkpointing"] is True  # a flag alone: true
    assert "torch_dtype float16 -> dtype float16" in result.stderr
    assert (f"dataset_dir {data} -> dataset (added) {data / 'part1.json'} "
            f"{data / 'part2.json'};") in result.stderr


def test_run_sft_sh_trains_a_new_adapter(sft, run_sft_sh, tmp_path):
    """The seed's second configuration (a new LoRA, --peft_path removed), one step. In-process
    rather than under torchrun --nproc_per_node 1, which adds a second Python start and
    launches the same single process; without --deepspeed, whose start on CPUs takes ~40 s
    (tests/test_distributed.py trains with it)."""
    result = sft(*run_sft_sh(steps=1, deepspeed=False))
    assert result.exit_code == 0, result.output
    run = tmp_path / "output_dir"  # HF Trainer's output_dir, used as given
    saved = json.loads((run / "sft_args.json").read_text())
    assert saved["lora_modules_to_save"] == ["embed_tokens", "lm_head"]
    assert len(saved["dataset"]) == 2 and len(saved["val_dataset"]) == 1
    config = json.loads((run / "checkpoint-1" / "adapter_config.json").read_text())
    assert set(config["target_modules"]) == {"q_proj", "v_proj", "k_proj", "o_proj",
                                             "gate_proj", "down_proj", "up_proj"}
    assert config["r"] == 8 and config["lora_alpha"] == 32


def test_a_tokenizer_other_than_the_models_trains_when_it_fits(sft, run_sft_sh, tmp_path,
                                                                tiny_model_dir):
    # the same tokenizer files in another folder: the model's own
    same = tmp_path / "chinese_tokenizer"
    same.mkdir()
    for name in compat.TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, same)
    result = sft(*run_sft_sh(tokenizer=same, deepspeed=False), "--dry-run", "--json")
    arguments = plan_of(result)["plan"]["arguments"]
    assert arguments["model_id_or_path"] == str(tiny_model_dir)
    assert arguments["tokenizer_id_or_path"] is None
    assert "tokenizer_name_or_path has no effect here: it is the model's own" in result.stderr

    # Llama-2's 32000 tokens fit the tiny model's embeddings (Qwen2's vocabulary): the run
    # tokenizes with it and its checkpoints keep it
    llama2 = TOKENIZERS / "llama2"
    result = sft(*run_sft_sh(tokenizer=llama2, steps=1, deepspeed=False))
    assert result.exit_code == 0, result.output
    checkpoint = tmp_path / "output_dir" / "checkpoint-1"
    saved = json.loads((tmp_path / "output_dir" / "sft_args.json").read_text())
    assert saved["tokenizer_id_or_path"] == str(llama2)
    from transformers import AutoTokenizer

    kept, theirs = (AutoTokenizer.from_pretrained(folder) for folder in (checkpoint, llama2))
    text = "Give three tips for staying healthy. 你好"
    assert kept(text).input_ids == theirs(text).input_ids and len(kept) == len(theirs) == 32000


def test_a_tokenizer_larger_than_the_embeddings_is_refused_before_the_model_loads(
        sft, run_sft_sh, tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    larger = AutoTokenizer.from_pretrained(tiny_model_dir)
    larger.add_tokens(["<new_word>"])
    larger.save_pretrained(tmp_path / "chinese_tokenizer")
    result = sft(*run_sft_sh(tokenizer=tmp_path / "chinese_tokenizer", deepspeed=False))
    assert result.exit_code == 1
    assert (f"has {len(larger)} tokens and the model's embeddings have {len(larger) - 1} rows"
            in result.stderr and "--lora-modules-to-save embed_tokens lm_head" in result.stderr)
    assert "loading" not in result.stderr and not (tmp_path / "output_dir").exists()


def test_chinese_vicuna_finetune_py_holds_out_a_number_of_rows(sft, tiny_model_dir, tmp_path):
    data = alpaca(tmp_path / "merge.json", 8)
    vicuna = ["--data_path", data, "--test_size", "3", "--model_path", tiny_model_dir,
              "--output_path", tmp_path / "lora-Vicuna", "--eval_steps", "200",
              "--save_steps", "200", "--ignore_data_skip", "False"]
    result = sft(*vicuna, "--dry-run", "--json")
    shown = plan_of(result)
    plan = shown["plan"]["arguments"]
    assert plan["dataset"] == [str(data)] and plan["split_dataset_ratio"] == 3
    assert plan["model_id_or_path"] == str(tiny_model_dir)
    assert plan["output_dir"] == str(tmp_path / "lora-Vicuna")
    rows = {split["split"]: sum(source["rows"] for source in split["sources"])
            for split in shown["data"]["splits"]}
    assert rows == {"train": 5, "held-out": 3}, shown["data"]["splits"]
    assert "test_size 3 -> split-dataset-ratio 3" in result.stderr

    # finetune.py: "The test_size cannot be larger than the data size"
    result = sft(*vicuna, "--test_size", "8", "--dry-run")
    assert result.exit_code == 1 and "leaves no training rows out of 8" in result.stderr

    result = sft(*vicuna, "--wandb", "--dry-run", "--json")
    if importlib.util.find_spec("wandb") is None:
        assert result.exit_code == 1
        assert "--report-to wandb needs the wandb package: pip install wandb" in result.stderr
    else:
        assert plan_of(result)["plan"]["arguments"]["report_to"] == ["wandb"]


def test_other_values_of_the_seeds_flags(plugin_set, tmp_path, monkeypatch):
    from sdk.config import build_arguments
    from sdk.options import arguments_class

    def built(ours: dict | None = None, **foreign):
        registry = plugin_set.registry
        ours = {"dataset": ["a.json"]} if ours is None else ours
        return build_arguments(arguments_class(registry), ours, None, foreign, registry)

    # a folder of .json files is the data even where LLaMA-Factory's data/ would be read
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text("{}")
    alpaca(tmp_path / "data" / "extra.json", 1)
    folder = tmp_path / "sft_data"
    folder.mkdir()
    alpaca(folder / "a.json", 1)
    monkeypatch.chdir(tmp_path)
    arguments = built({}, dataset_dir=str(folder), stage="sft")
    assert arguments.dataset == [str(folder / "a.json")] and arguments.dataset_info is None
    assert built({}, dataset_dir="data").dataset_info == "data/dataset_info.json"

    assert built(val_size="100").split_dataset_ratio == 100
    assert built(val_size="0.1").split_dataset_ratio == 0.1
    assert built(wandb="true").report_to == ["wandb"]
    assert built(load_in_kbits="4", quant_type="fp4").quantization_bit == 4
    assert built(load_in_kbits="16").quantization_bit is None
    assert built(full_finetuning="true").sft_type == "full"
    assert built(preprocessing_num_workers="8").dataset_num_proc == 8
    assert built({}, data_path="b.json", custom_train_dataset_path="c.json").dataset == [
        "b.json", "c.json"]  # two tools' flags that add data: both added


@pytest.mark.parametrize("flags, message", [
    (["--val_size", "2.5"], "LLaMA-Factory's val_size from 1 up counts rows: give a whole"),
    (["--split-dataset-ratio", "2.5"], "--split-dataset-ratio 2.5: give a fraction below 1 or "
                                       "a whole number of rows"),
    (["--test_size", "-1"], "Chinese-Vicuna's test_size is a number of rows"),
    (["--load_in_kbits", "2"], "Chinese-LLaMA-Alpaca-2's load_in_kbits takes 4, 8 or 16"),
    (["--bf16", "--torch_dtype", "float16"], "The command line: bf16 and torch_dtype both set "
                                             "--dtype, to bf16 and float16; keep one."),
    (["--logging_strategy", "epoch"], "every N steps only"),
    (["--ignore_data_skip", "True"], "always skips the batches it already trained on"),
    (["--lora_remote_checkpoint", "Facico/Chinese-Vicuna-lora-7b-3epoch-belle-and-guanaco"],
     "give DIR as --adapter"),
])
def test_what_the_seeds_cannot_have_is_refused(refused_sft, flags, message):
    assert message in refused_sft(*flags)


def test_run_clm_sft_with_peft_flags_without_effect_say_so(capsys):
    flags = {"use_fast_tokenizer": "false", "cache_dir": "/tmp/hf", "use_auth_token": "true",
             "data_cache_dir": "cache", "keep_linebreaks": "true", "load_in_kbits": "16"}
    assert compat.translate(flags, "sft", "The command line") == {}
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" has no effect here: ")[0] for line in lines] == [
        f"[sdk] {flag}" for flag in flags]


def test_a_dataset_dir_without_data_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("")
    with pytest.raises(SdkError, match="holds neither a dataset_info.json"):
        compat.translate({"dataset_dir": str(tmp_path)}, "sft", "The command line")
