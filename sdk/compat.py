"""Other tools' flags and config keys, read as ours: ms-swift 1.x/2.x (`swift sft`,
`llm_sft.py`, `swift infer`) with 3.x's renamings, LLaMA-Factory (its YAML configs and
`llamafactory-cli train` flags, which ChatGLM-Efficient-Tuning shares), Chinese-LLaMA-Alpaca-2's
run_sft.sh (run_clm_sft_with_peft.py: transformers' Trainer flags and its own) and
Chinese-Vicuna's finetune.py.

``ALIASES`` is the one table: each foreign name becomes our fields (its value translated),
has no effect here (accepted with one line saying why) or is refused with the reason (it would
change the result and cannot be honoured). ``translate`` applies it to a command line's or a
config file's foreign keys before the arguments are built; ``resolve_names`` then maps ms-swift's
model type spellings and LLaMA-Factory's model ids onto registered model types. `sdk sft --help`
lists none of these; docs/compat.md is generated from the table (tests/test_compat.py checks it).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from sdk.errors import SdkError

SWIFT, LF = "ms-swift", "LLaMA-Factory"
CLA2, VICUNA = "Chinese-LLaMA-Alpaca-2", "Chinese-Vicuna"
BOTH = f"{SWIFT}, {LF}"
# pseudo-fields: a sample size applied to the final --dataset / --val-dataset entries
TRAIN_SAMPLE, VAL_SAMPLE = "#train_sample", "#val_sample"


class Ignored(Exception):
    """The flag has no effect here; the text says why. ``marks``: pseudo-fields that other
    flags' checks read (finish)."""

    def __init__(self, why: str, marks: dict[str, Any] | None = None) -> None:
        super().__init__(why)
        self.marks = marks or {}


class Alias(NamedTuple):
    tools: str
    doc: str  # what it is here, for docs/compat.md
    apply: Callable[[Any], dict[str, Any]]  # raises Ignored, or SdkError to refuse
    commands: tuple[str, ...] = ("sft",)


def say(line: str) -> None:
    """``line`` on stderr, by one process only: under torchrun every process reads the same
    command line, and rank 0 speaks for them (RANK, else LOCAL_RANK; none: not launched)."""
    if os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) == "0":
        print(line, file=sys.stderr)


def truth(value: Any) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise SdkError(f"expected true or false, got {value!r}")
    return text in ("true", "1", "yes")


def number(value: Any) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise SdkError(f"expected a whole number, got {value!r}") from None


def fraction(value: Any) -> float:
    try:
        return float(str(value).strip())
    except ValueError:
        raise SdkError(f"expected a number, got {value!r}") from None


def rename(field: str) -> Callable[[Any], dict]:
    """The same setting under our name (its value: THEIR_VALUES, in finish)."""
    def apply(value: Any) -> dict[str, Any]:
        return {field: value}
    return apply


def no_effect(why: str) -> Callable[[Any], dict]:
    def apply(value: Any) -> dict[str, Any]:
        raise Ignored(why)
    return apply


def precision(dtype: str) -> Callable[[Any], dict]:
    def apply(value: Any) -> dict[str, Any]:
        if truth(value):
            return {"dtype": dtype}
        raise Ignored("false leaves the dtype to --dtype (auto: bf16/fp16 on GPU, fp32 on CPU)")
    return apply


def flash_attention(value: Any) -> dict[str, Any]:
    if str(value).lower() == "auto":
        raise Ignored("--attn-impl auto picks flash_attention_2 where it can run")
    return {"attn_impl": "flash_attention_2" if truth(value) else "sdpa"}


def train_sample(value: Any) -> dict[str, Any]:
    count = number(value)
    if count < 0:
        raise Ignored("-1 trains on every row, as here by default")
    return {TRAIN_SAMPLE: count}


def val_sample(value: Any) -> dict[str, Any]:
    count = number(value)
    if count < 0:
        raise Ignored("-1 keeps every held-out row, as here by default")
    return {VAL_SAMPLE: count}


def self_cognition(value: Any) -> dict[str, Any]:
    count = number(value)
    if count <= 0:
        raise Ignored("0 adds no self-cognition rows")
    return {"#self_cognition": count}


def mix_ratio(value: Any) -> dict[str, Any]:
    if fraction(value) == 0:
        raise Ignored("0 mixes in no general-purpose data")
    raise SdkError("mixes ms-swift's own general-purpose datasets into the training data, "
                   "which are not available here; add the datasets you want to --dataset "
                   "(NAME#N samples N rows of one)")


def revision(value: Any) -> dict[str, Any]:
    if str(value) in ("master", "main"):
        raise Ignored("the hub's default branch is what is downloaded")
    raise SdkError(f"pins revision '{value}', and models are downloaded at their default "
                   "branch here; download that revision into a folder and give it as "
                   "--model-id-or-path")


def strategy(flag: str) -> Callable[[Any], dict]:
    def apply(value: Any) -> dict[str, Any]:
        if str(value).lower() == "steps":
            raise Ignored(f"runs here {flag} every N steps (--{flag}-steps)")
        raise SdkError(f"'{value}': runs here {flag} every N steps only; leave it out and set "
                       f"--{flag}-steps")
    return apply


def best_metric(value: Any) -> dict[str, Any]:
    if str(value).lower() in ("loss", "eval_loss"):
        raise Ignored("the best checkpoint is the one of lowest eval loss, as here always")
    raise SdkError(f"'{value}': the best checkpoint here is the one of lowest eval loss")


def versioned(value: Any) -> dict[str, Any]:
    if truth(value):
        raise Ignored("each run writes a new folder, OUTPUT_DIR/<model-type>/v<N>-<time>/")
    return {"output_dir_as_run": True}


def dataset_seed(value: Any) -> dict[str, Any]:
    return {"#dataset_seed": number(value)}


def stage(value: Any) -> dict[str, Any]:
    if str(value).lower() == "sft":
        raise Ignored("supervised fine-tuning is what `sdk sft` does")
    raise SdkError(f"'{value}': sdk sft trains supervised fine-tuning (stage: sft) only; "
                   "pre-training, reward modelling, PPO, DPO and KTO are not supported")


def held_out_rows(value: Any) -> dict[str, Any]:
    """A held-out fraction below 1, a number of rows from 1 up: --split-dataset-ratio reads
    both."""
    share = fraction(value)
    if share >= 1 and not share.is_integer():
        raise SdkError("from 1 up counts rows: give a whole number, or a fraction below 1")
    return {"split_dataset_ratio": share}


def held_out_count(value: Any) -> dict[str, Any]:
    count = number(value)
    if count < 0:
        raise SdkError("is a number of rows: give 0 or more")
    if count == 0:
        raise Ignored("0 holds out no rows, as here by default")
    return {"split_dataset_ratio": count}


def dataset_dir(value: Any) -> dict[str, Any]:
    """LLaMA-Factory's folder (its dataset_info.json) or Chinese-LLaMA-Alpaca-2's (every .json
    file in it is alpaca training data), told apart by what the folder holds."""
    folder = str(value)
    info = os.path.join(folder, "dataset_info.json")
    if os.path.isfile(info):
        return {"dataset_info": info}
    files = sorted(entry.path for entry in os.scandir(folder) if entry.is_file()
                   and entry.name.endswith(".json")) if os.path.isdir(folder) else []
    if not files:
        raise SdkError(f"'{folder}' holds neither a dataset_info.json (LLaMA-Factory's data "
                       "folder) nor .json files (Chinese-LLaMA-Alpaca-2's): give the folder "
                       "that holds your data")
    return {"+dataset": files, "#dataset_files": True}


def load_in_kbits(value: Any) -> dict[str, Any]:
    bits = number(value)
    if bits == 16:
        raise Ignored("16 loads the model unquantized, as here by default")
    if bits not in (4, 8):
        raise SdkError("takes 4, 8 or 16")
    return {"quantization_bit": bits}


def full_finetuning(value: Any) -> dict[str, Any]:
    if truth(value):
        return {"sft_type": "full"}
    raise Ignored("false trains LoRA adapters, as --sft-type lora does by default")


def wandb(value: Any) -> dict[str, Any]:
    if truth(value):
        return {"+report_to": "wandb"}
    raise Ignored("false logs without wandb, as here by default")


def remote_checkpoint(value: Any) -> dict[str, Any]:
    raise SdkError(f"downloads the hub adapter '{value}' into --resume_from_checkpoint's "
                   f"folder: download it (huggingface-cli download {value} --local-dir DIR) "
                   "and give DIR as --adapter")


def ignore_data_skip(value: Any) -> dict[str, Any]:
    if not truth(value):
        raise Ignored("a resumed run skips the batches it already trained on, as here always")
    raise SdkError("true: a resumed run here always skips the batches it already trained on, "
                   "so that it sees the data as the uninterrupted run would; leave it out")


def do_train(value: Any) -> dict[str, Any]:
    if truth(value):
        raise Ignored("sdk sft trains", {"#do_train": True})
    raise SdkError("false: sdk sft trains; to predict or evaluate a checkpoint without "
                   "training, run `sdk infer --ckpt-dir DIR --dataset D`")


def eval_human(value: Any) -> dict[str, Any]:
    if truth(value):
        raise Ignored("without --dataset, sdk infer chats")
    return {"val_dataset_from_run": True, "#eval_human": False}


def merge_and_save(value: Any) -> dict[str, Any]:
    if not truth(value):
        raise Ignored("false: the adapter is not merged")
    say("[sdk] --merge_lora_and_save merges in memory (--merge-lora); to save the merged "
        "model, run `sdk export --ckpt-dir DIR --merge-lora`.")
    return {"merge_lora": True}


def quantization_method(value: Any) -> dict[str, Any]:
    if str(value).lower() in ("bnb", "bitsandbytes"):
        raise Ignored("--quantization-bit quantizes with bitsandbytes")
    raise SdkError(f"'{value}': --quantization-bit quantizes with bitsandbytes (bnb) only")


# Their tuner names -> ours (ms-swift's sft_type/train_type/tuner_type, LLaMA-Factory's and
# ChatGLM-Efficient-Tuning's rename("sft_type")).
TUNERS = {"p_tuning": "ptuning", "p-tuning": "ptuning", "prefix_tuning": "prefix",
          "prompt_tuning": "prompt", "qlora": "qlora"}
DTYPES = {"auto": "auto", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16",
          "float16": "fp16", "fp32": "fp32", "float32": "fp32"}
# Values of our own flags as the other tools spell them (ms-swift's --deepspeed default-zero2)
THEIR_VALUES: dict[str, Mapping[str, str]] = {
    "sft_type": TUNERS, "dtype": DTYPES, "bnb_4bit_comp_dtype": DTYPES,
    "attn_impl": {"flash_attn": "flash_attention_2"},
    "deepspeed": {"default-zero2": "zero2", "default-zero3": "zero3"},
    # ms-swift's pt and LLaMA-Factory's huggingface: transformers' generate
    "infer_backend": {"pt": "transformers", "huggingface": "transformers"}}
# Template names of ms-swift (template_type) and LLaMA-Factory (template) that are spelled
# otherwise here; None: the model type's own template (their name covers a whole family).
TEMPLATES: dict[str, str | None] = {
    "auto": None, "llama": "llama2", "qwen2_5": "qwen2.5", "qwen1half": "qwen1.5",
    "mistral": None, "intern": "internlm", "intern2": "internlm2",
    "llama3_1": "llama3.1", "llama3_2": "llama3.2", "gemma2": None, "gemma3_text": "gemma3",
    "gemma3_vision": "gemma3",
    # Qwen3-2507: LLaMA-Factory's qwen3_nothink, ms-swift's qwen3_nothinking / qwen3_thinking
    "qwen3_nothink": "qwen3-instruct-2507", "qwen3_nothinking": "qwen3-instruct-2507",
    "qwen3_thinking": "qwen3-thinking-2507",
}
# LLaMA-Factory's `qwen` template renders each Qwen generation as that generation's chat
# template does; ours are per generation.
LF_TEMPLATES: dict[str, str | None] = {**TEMPLATES, "qwen": None}


def template(names: Mapping[str, str | None]) -> Callable[[Any], dict]:
    def apply(value: Any) -> dict[str, Any]:
        return {"template": names.get(str(value).lower(), value)}
    return apply


SFT_AND_INFER = ("sft", "infer")
ALIASES: dict[str, Alias] = {
    # --- ms-swift
    "template_type": Alias(SWIFT, "--template (AUTO: the model type's)", template(TEMPLATES),
                           SFT_AND_INFER),
    "model_revision": Alias(SWIFT, "master/main: no effect; another revision refused",
                            revision, SFT_AND_INFER),
    "dataset_test_ratio": Alias(SWIFT, "--split-dataset-ratio", rename("split_dataset_ratio")),
    "lora_dropout_p": Alias(SWIFT, "--lora-dropout", rename("lora_dropout")),
    "train_dataset_sample": Alias(SWIFT, "NAME#N on --dataset (-1: all rows)", train_sample),
    "dataset_sample": Alias(SWIFT, "NAME#N on --dataset (-1: all rows)", train_sample),
    "val_dataset_sample": Alias(SWIFT, "NAME#N on --val-dataset, else --held-out-sample N "
                                "(-1: all rows)", val_sample),
    "train_dataset_mix_ratio": Alias(SWIFT, "0: no effect; else refused", mix_ratio),
    "self_cognition_sample": Alias(SWIFT, "self-cognition#N added to --dataset",
                                   self_cognition),
    "use_flash_attn": Alias(SWIFT, "--attn-impl flash_attention_2 (false: sdpa)",
                            flash_attention, SFT_AND_INFER),
    "deepspeed_config_path": Alias(SWIFT, "--deepspeed FILE", rename("deepspeed")),
    "train_type": Alias(SWIFT, "--sft-type", rename("sft_type")),
    "tuner_type": Alias(SWIFT, "--sft-type", rename("sft_type")),
    "add_output_dir_suffix": Alias(SWIFT, "true: no effect; false: --output-dir-as-run",
                                   versioned),
    # ms-swift 3.x
    "add_version": Alias(SWIFT, "true: no effect; false: --output-dir-as-run", versioned),
    "model": Alias(SWIFT, "--model-id-or-path (a folder) or --model-type (a hub id of a "
                   "registered model type)", rename("#model"), SFT_AND_INFER),
    "torch_dtype": Alias(f"{SWIFT}, {CLA2}", "--dtype (float16: fp16, ...)", rename("dtype"),
                         SFT_AND_INFER),
    "target_modules": Alias(SWIFT, "--lora-target-modules (all-linear: every linear layer)",
                            rename("lora_target_modules")),
    "adapters": Alias(SWIFT, "--adapter (sft), --ckpt-dir (infer)", rename("adapter"),
                      SFT_AND_INFER),
    "evaluation_strategy": Alias(BOTH, "steps: no effect; else refused", strategy("eval")),
    "eval_strategy": Alias(BOTH, "steps: no effect; else refused", strategy("eval")),
    "save_strategy": Alias(BOTH, "steps: no effect; else refused", strategy("save")),
    "load_best_model_at_end": Alias(BOTH, "no effect (best_checkpoint.json is always kept)",
                                    no_effect("the best checkpoint is always recorded "
                                              "(best_checkpoint.json) and kept by rotation")),
    "metric_for_best_model": Alias(BOTH, "loss: no effect; else refused", best_metric),
    "fp16": Alias(BOTH, "--dtype fp16 (true)", precision("fp16"), SFT_AND_INFER),
    "bf16": Alias(BOTH, "--dtype bf16 (true)", precision("bf16"), SFT_AND_INFER),
    "preprocess_num_proc": Alias(SWIFT, "--dataset-num-proc", rename("dataset_num_proc")),
    "save_only_model": Alias(BOTH, "--only-save-model", rename("only_save_model")),
    "dataset_seed": Alias(SWIFT, "--seed (the data is sampled and split with it)",
                          dataset_seed),
    "eval_batch_size": Alias(SWIFT, "no effect (eval uses --batch-size)",
                             no_effect("eval loss batches as training does (--batch-size)")),
    "tuner_backend": Alias(SWIFT, "no effect (peft)", no_effect(
        "every adapter here is trained with peft"), SFT_AND_INFER),
    "tuner_bankend": Alias(SWIFT, "no effect (peft)", no_effect(
        "every adapter here is trained with peft"), SFT_AND_INFER),
    "check_dataset_strategy": Alias(SWIFT, "no effect (records are always checked)", no_effect(
        "every record is checked; a bad one stops the run unless --skip-bad-records")),
    "test_oom_error": Alias(SWIFT, "no effect", no_effect(
        "sdk sft --dry-run reports the longest rows and the batches before training")),
    "ignore_args_error": Alias(SWIFT, "no effect", no_effect(
        "argument errors are always reported"), SFT_AND_INFER),
    "ddp_backend": Alias(BOTH, "no effect (torchrun picks it)", no_effect(
        "the launcher picks the backend (nccl on GPUs, gloo on CPUs)")),
    "save_generation_config": Alias(SWIFT, "no effect", no_effect(
        "the generation settings are the flags given"), ("infer",)),
    "custom_train_dataset_path": Alias(SWIFT, "added to --dataset", rename("+dataset")),
    "custom_val_dataset_path": Alias(SWIFT, "added to --val-dataset", rename("+val_dataset")),
    "lazy_tokenize": Alias(SWIFT, "no effect (tokenized once, cached)", no_effect(
        "the data is tokenized once before training and cached")),
    **{name: Alias(SWIFT, "no effect (held-out predictions decode greedily)", no_effect(
        "sdk sft --predict-with-generate decodes greedily (the trained weights are the same); "
        "sdk infer --dataset takes the decoding flags")) for name in (
        "do_sample", "temperature", "top_k", "top_p", "repetition_penalty")},
    "eval_human": Alias(SWIFT, "false: --val-dataset-from-run; true: chat", eval_human,
                        ("infer",)),
    "merge_lora_and_save": Alias(SWIFT, "--merge-lora (saving: sdk export --merge-lora)",
                                 merge_and_save, ("infer",)),
    "use_streamer": Alias(SWIFT, "--stream", rename("stream"), ("infer",)),
    "load_args_from_ckpt_dir": Alias(SWIFT, "no effect (always)", no_effect(
        "a checkpoint's run arguments (model type, template, tuner) are always read"),
        ("infer",)),
    "show_dataset_sample": Alias(SWIFT, "no effect (every held-out row is predicted)",
                                 no_effect("every held-out row is predicted"), ("infer",)),
    # --- LLaMA-Factory (and ChatGLM-Efficient-Tuning)
    "model_name_or_path": Alias(LF, "--model-id-or-path (a folder) or --model-type (a hub id "
                                "of a registered model type)", rename("#model_name_or_path"),
                                SFT_AND_INFER),
    "stage": Alias(LF, "sft: no effect; other stages refused", stage),
    "do_train": Alias(LF, "true: no effect; false refused", do_train),
    "do_eval": Alias(LF, "no effect (eval loss runs on any held-out data)", no_effect(
        "eval loss is computed whenever there is held-out data")),
    "do_predict": Alias(LF, "--predict-with-generate (with do_train; alone refused)",
                        rename("#do_predict")),
    "finetuning_type": Alias(LF, "--sft-type (p_tuning: ptuning)", rename("sft_type")),
    "lora_target": Alias(LF, "--lora-target-modules (all: every linear layer)",
                         rename("lora_target_modules")),
    "cutoff_len": Alias(LF, "--max-length", rename("max_length")),
    "val_size": Alias(LF, "--split-dataset-ratio (a fraction below 1, or from 1 up a number "
                      "of rows)", held_out_rows),
    "dataset_dir": Alias(f"{LF}, {CLA2}", "with a dataset_info.json: --dataset-info "
                         "DIR/dataset_info.json (LLaMA-Factory's); else each .json file in it "
                         "added to --dataset (Chinese-LLaMA-Alpaca-2's alpaca files)",
                         dataset_dir),
    "per_device_train_batch_size": Alias(LF, "--batch-size", rename("batch_size")),
    "per_device_eval_batch_size": Alias(LF, "no effect (eval uses --batch-size)", no_effect(
        "eval loss batches as training does (--batch-size)")),
    "overwrite_cache": Alias(LF, "no effect", no_effect(
        "the tokenized data is cached by its content and settings")),
    "plot_loss": Alias(LF, "no effect (loss.png is always drawn)", no_effect(
        "every run draws its loss curves (loss.png)")),
    "ddp_timeout": Alias(f"{LF}, {CLA2}", "no effect", no_effect(
        "the launcher's default timeout is used")),
    "preprocessing_num_workers": Alias(LF, "--dataset-num-proc", rename("dataset_num_proc")),
    "quantization_method": Alias(LF, "bnb: no effect; else refused", quantization_method),
    "template": Alias(LF, "--template (qwen: the model type's)", template(LF_TEMPLATES),
                      SFT_AND_INFER),
    "checkpoint_dir": Alias(LF, "--adapter (sft), --ckpt-dir (infer)",
                            rename("adapter"), SFT_AND_INFER),
    "adapter_name_or_path": Alias(LF, "--adapter (sft), --ckpt-dir (infer)",
                                  rename("adapter"), SFT_AND_INFER),
    # --- Chinese-LLaMA-Alpaca-2's run_clm_sft_with_peft.py (transformers' Trainer flags and
    # its own; the LLaMA-Factory names above that it shares read the same)
    "tokenizer_name_or_path": Alias(CLA2, "no effect when it is the model's own tokenizer (its "
                                    "folder, or the same tokenizer files); another: "
                                    "--tokenizer-id-or-path (it must fit the embeddings)",
                                    rename("#tokenizer")),
    "tokenizer_name": Alias(CLA2, "as tokenizer_name_or_path", rename("#tokenizer")),
    "use_fast_tokenizer": Alias(CLA2, "no effect (the model's own tokenizer)", no_effect(
        "the model folder's tokenizer is loaded as its files define it")),
    "cache_dir": Alias(CLA2, "no effect (the hub's own cache)", no_effect(
        "downloads go to the hub's cache (HF_HOME, MODELSCOPE_CACHE)")),
    "use_auth_token": Alias(CLA2, "no effect (--hub-token, else the login's token)",
                            no_effect("the hub's saved login token is used (or --hub-token)")),
    "data_cache_dir": Alias(CLA2, "no effect (the script does not read it)", no_effect(
        "run_clm_sft_with_peft.py passes none on either; the tokenized data is cached under "
        "--output-dir")),
    "keep_linebreaks": Alias(CLA2, "no effect (text files only)", no_effect(
        "it applies to plain-text files, and the data here are .json records")),
    "validation_file": Alias(CLA2, "added to --val-dataset", rename("+val_dataset")),
    "validation_split_percentage": Alias(CLA2, "no effect (the SFT script does not read it)",
                                         no_effect(
        "run_clm_sft_with_peft.py does not read it either: its held-out rows are "
        "--validation_file's (here --val-dataset; --split-dataset-ratio holds out a share)")),
    "trainable": Alias(CLA2, "--lora-target-modules (a comma list)",
                       rename("lora_target_modules")),
    "modules_to_save": Alias(CLA2, "--lora-modules-to-save (a comma list)",
                             rename("lora_modules_to_save")),
    "load_in_kbits": Alias(CLA2, "--quantization-bit 4 or 8 (16: no effect)", load_in_kbits),
    "quant_type": Alias(CLA2, "--bnb-4bit-quant-type", rename("bnb_4bit_quant_type")),
    "double_quant": Alias(CLA2, "--bnb-4bit-use-double-quant",
                          rename("bnb_4bit_use_double_quant")),
    "use_flash_attention_2": Alias(CLA2, "--attn-impl flash_attention_2 (false: sdpa)",
                                   flash_attention),
    "full_finetuning": Alias(CLA2, "--sft-type full (false: no effect)", full_finetuning),
    "peft_path": Alias(CLA2, "--adapter (trains on with its own rank and targets, as "
                       "the script does)", rename("adapter")),
    "max_seq_length": Alias(CLA2, "--max-length", rename("max_length")),
    "logging_strategy": Alias(CLA2, "steps: no effect; else refused", strategy("logging")),
    "logging_first_step": Alias(CLA2, "no effect (step 1 is always logged)", no_effect(
        "the first step's loss is always logged")),
    "ddp_find_unused_parameters": Alias(CLA2, "no effect (the Trainer decides; speed only)",
                                        no_effect(
        "DDP's search for unused parameters changes the speed, not the result; transformers' "
        "Trainer decides it (off with gradient checkpointing)")),
    # --- Chinese-Vicuna's finetune.py (its other settings are constants in the script, not
    # flags: batch 128, 3 epochs, lr 3e-4, 256 tokens, LoRA r 8 on q_proj,v_proj, 8-bit)
    "data_path": Alias(VICUNA, "added to --dataset", rename("+dataset")),
    "test_size": Alias(VICUNA, "--split-dataset-ratio N: N rows held out (finetune.py holds "
                       "out 200 when it is not given; here none)", held_out_count),
    "wandb": Alias(VICUNA, "--report-to wandb (the wandb package must be installed)",
                   wandb),
    "output_path": Alias(VICUNA, "--output-dir", rename("output_dir")),
    "model_path": Alias(VICUNA, "as LLaMA-Factory's model_name_or_path",
                        rename("#model_name_or_path")),
    "lora_remote_checkpoint": Alias(VICUNA, "refused (download it, give --adapter)",
                                    remote_checkpoint),
    "ignore_data_skip": Alias(VICUNA, "false: no effect; true refused", ignore_data_skip),
}
# A config or command line with one of these keys is LLaMA-Factory's: its `template` names
# are LLaMA-Factory's (`template` is also ours, so only then translated).
LF_MARKERS = ("model_name_or_path", "stage", "finetuning_type", "cutoff_len", "do_train",
              "lora_target", "dataset_dir")
LF_DATASET_INFO = os.path.join("data", "dataset_info.json")
# sft's flags that sdk infer accepts with no effect: a script often passes them to both
INFER_IGNORES = {"sft_type": "the checkpoint records its tuner",
                 "finetuning_type": "the checkpoint records its tuner",
                 "dataset_test_ratio": "--val-dataset-from-run predicts the rows the run held "
                                       "out",
                 "dataset_seed": "--val-dataset-from-run predicts the rows the run held out",
                 "max_length": "a reply ends at --max-new-tokens; a prompt too long for the "
                               "model's window stops at its row (--truncate-long-prompts)",
                 "quantization_bit": "a checkpoint loads as it was trained; a --model-type "
                                     "loads unquantized"}


def llama_factory(keys: Iterable[str]) -> bool:
    return any(key in LF_MARKERS for key in keys)


def foreign_keys(keys: Iterable[str], fields: Iterable[str], command: str) -> list[str]:
    """Those of ``keys`` (a command line's or a config file's) that are another tool's names
    for this command: not our fields, in ALIASES; LLaMA-Factory's ``template`` too when a
    LLaMA-Factory key is among them."""
    keys, fields = list(keys), set(fields)
    lf = llama_factory(keys)
    return [key for key in keys if (key == "template" and lf) or (
        key not in fields and (command in getattr(ALIASES.get(key), "commands", ())
                               or (command == "infer" and key in INFER_IGNORES)))]


def translate(given: Mapping[str, Any], command: str, where: str) -> dict[str, Any]:
    """Another tool's ``given`` names (foreign_keys) as our fields; prints one line per flag
    without effect and one line naming the translated ones. A refused flag raises SdkError
    naming ``where`` (the command line or a config file) and the reason, and so do two that
    set one option to different values (fp16 and torch_dtype bfloat16)."""
    values: dict[str, Any] = {"#llama_factory": True} if llama_factory(given) else {}
    if values and command == "sft":  # LLaMA-Factory writes its run into output_dir as given
        values["#output_dir_as_run"] = True
    read, ignored, set_by = [], [], {}
    for name, value in given.items():
        if command == "infer" and name in INFER_IGNORES:
            ignored.append((name, INFER_IGNORES[name]))
            continue
        alias = ALIASES[name]
        if command == "infer" and name in ("checkpoint_dir", "adapter_name_or_path", "adapters"):
            alias = alias._replace(apply=rename("ckpt_dir"))
        try:
            made = alias.apply(value)
        except Ignored as why:
            ignored.append((name, str(why)))
            values.update(why.marks)
            continue
        except SdkError as error:
            raise SdkError(f"{where}: {alias.tools}'s {name} {error}.") from None
        for key, setting in made.items():
            if key.startswith("+"):  # several flags add to one list
                values[key] = [*split_list(values.get(key)), *split_list(setting)]
                continue
            if key in values and spelled(key, values[key]) != spelled(key, setting):
                raise SdkError(f"{where}: {set_by[key]} and {name} both set "
                               f"--{key.lstrip('#').replace('_', '-')}, to "
                               f"{values[key]} and {setting}; keep one.")
            values[key], set_by[key] = setting, name
        shown = {key: made[key] for key in made if not key.startswith("#")}
        read.append(f"{name} {value} -> " + (", ".join(
            f"{key.lstrip('+').replace('_', '-')}{' (added)' if key[0] == '+' else ''} "
            + ("(the default)" if shown is None else " ".join(map(str, shown))
               if isinstance(shown, list) else str(shown))
            for key, shown in shown.items())
            or (alias.doc if made else "(the default)")))  # resolved later: say how
    for name, why in ignored:
        say(f"[sdk] {name} has no effect here: {why}.")
    if read:
        say(f"[sdk] read as sdk's options: {'; '.join(read)}.")
    return values


def spelled(field: str, value: Any) -> str:
    """``value`` of ``field`` as sdk spells it (THEIR_VALUES), to compare two tools' flags."""
    text = str(value).lower()
    return (THEIR_VALUES.get(field) or {}).get(text, text)


def finish(values: dict[str, Any]) -> dict[str, Any]:
    """The pseudo-fields of ``translate`` applied to the merged values: sample sizes on the
    dataset entries, the dataset seed, self-cognition rows."""
    for field, spellings in THEIR_VALUES.items():
        if isinstance(values.get(field), str):
            values[field] = spellings.get(values[field].lower(), values[field])
    if [name.upper() for name in values.get("lora_target_modules") or ()] in (
            ["DEFAULT"], ["AUTO"]):  # ms-swift: the model type's own
        values["lora_target_modules"] = []
    for field in ("dataset", "val_dataset", "report_to"):
        if f"+{field}" in values:
            values[field] = [*split_list(values.get(field)),
                             *split_list(values.pop(f"+{field}"))]
    predict = values.pop("#do_predict", None)
    if predict is not None and truth(predict):
        if "#do_train" not in values:
            raise SdkError("do_predict without do_train predicts with a checkpoint and trains "
                           "nothing: run `sdk infer --ckpt-dir DIR --dataset D` (sdk sft "
                           "trains, then predicts its held-out rows with do_train).")
        values["predict_with_generate"] = True
    values.pop("#do_train", None)
    if values.pop("#output_dir_as_run", None):
        values.setdefault("output_dir_as_run", True)
    # LLaMA-Factory's default dataset_dir (not when the data is a folder's .json files)
    folder_files = values.pop("#dataset_files", None)
    if values.pop("#llama_factory", None) and values.get("dataset") and not folder_files \
            and not values.get("dataset_info") and os.path.isfile(LF_DATASET_INFO):
        values["dataset_info"] = os.path.abspath(LF_DATASET_INFO)
    if values.pop("#eval_human", True) is False and values.get("dataset"):
        say(f"[sdk] eval_human false predicts the held-out rows of --dataset "
            f"{' '.join(split_list(values.pop('dataset')))}: those the run held out "
            "(--val-dataset-from-run).")
    pissa = re.fullmatch(r"pissa_niter_(\d+)", str(values.get("init_lora_weights")))
    if pissa:  # peft's and ms-swift's spelling of PiSSA with a fast SVD
        values["init_lora_weights"] = "pissa"
        values.setdefault("pissa_niter", int(pissa[1]))
    extra = values.pop("#self_cognition", None)
    if extra:
        values["dataset"] = [*split_list(values.get("dataset")), f"self-cognition#{extra}"]
    seed = values.pop("#dataset_seed", None)
    if seed is not None and seed != values.get("seed", 42):
        raise SdkError(f"dataset_seed {seed} differs from --seed {values.get('seed', 42)}: "
                       "here one seed samples and splits the data and trains; give --seed "
                       f"{seed} (or the same value to both).")
    for pseudo, field in ((TRAIN_SAMPLE, "dataset"), (VAL_SAMPLE, "val_dataset")):
        count = values.pop(pseudo, None)
        if count is None:
            continue
        entries = split_list(values.get(field))
        if not entries and field == "val_dataset":  # ms-swift: N of the held-out split
            if not fraction(values.get("split_dataset_ratio") or 0):
                raise SdkError(f"val_dataset_sample {count} samples the held-out rows, and "
                               "none are held out: ms-swift holds out dataset_test_ratio 0.01 "
                               "by default, sdk 0; give --dataset_test_ratio "
                               "(--split-dataset-ratio) or --val-dataset.")
            values["held_out_sample"] = count
            continue
        if not entries:
            raise SdkError(f"a sample size ({count} rows) was given with no "
                           f"--{field.replace('_', '-')} to take it from.")
        values[field] = [entry if "#" in entry else f"{entry}#{count}" for entry in entries]
    return values


def split_list(values: Any) -> list[str]:
    """A list flag's value (one text, a list, commas between values; None: none) as a list."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    return [part.strip() for value in values for part in str(value).split(",") if part.strip()]


def model_type_spelling(name: str, known: list[str]) -> str:
    """ms-swift's model type spelling as ours: qwen1half -> qwen1.5, 2_5 -> 2.5, Mistral's
    -v3 -> -v0.3; ``name`` unchanged when it is ours or nothing registered matches."""
    if name in known:
        return name
    spelled = re.sub(r"(\d)_(\d)", r"\1.\2", name.replace("1half", "1.5"))
    spelled = MODEL_TYPES.get(spelled, spelled)
    spelled = re.sub(r"^(mistral-7b-instruct)-v(\d)$", r"\1-v0.\2", spelled)
    return spelled if spelled in known else name


def hub_id(repo: str) -> str:
    """A hub id compared case-insensitively, under its organization's current name."""
    owner, slash, name = repo.lower().partition("/")
    return f"{ORGANIZATIONS.get(owner, owner)}{slash}{name}"


# ms-swift's hub datasets bundled here under another name (its self-cognition rows)
DATASETS = {"swift/self-cognition": "self-cognition"}
# Hub organizations renamed since the other tools' examples were written
ORGANIZATIONS = {"thudm": "zai-org"}
# ms-swift model types that the rule does not reach
MODEL_TYPES = {"mixtral-moe-7b-instruct": "mixtral-8x7b-instruct-v0.1",
               "gemma2-2b-instruct": "gemma2-2b-it", "gemma2-9b-instruct": "gemma2-9b-it",
               "gemma2-27b-instruct": "gemma2-27b-it"}


def their_names(values: dict[str, Any], registry: Any) -> None:
    """ms-swift 3.x's template names (qwen2_5) given as --template, and hub ids of registered
    datasets (AI-ModelScope/alpaca-gpt4-data-zh#500, swift/self-cognition) as --dataset
    entries, as ours; a name registered here is ours as it is."""
    name = values.get("template")
    if isinstance(name, str) and name not in registry.names("templates"):
        spelled = TEMPLATES.get(name.lower(), re.sub(r"(\d)_(\d)", r"\1.\2", name))
        if spelled is None or spelled in registry.names("templates"):
            values["template"] = spelled
    hub_names = {hub_id(repo): spec.name for spec in registry.specs("datasets")
                 for repo in spec.hub_ids.values()} | DATASETS
    for field in ("dataset", "val_dataset"):
        if field not in values:
            continue
        entries = []
        for entry in split_list(values[field]):
            base, hash_sign, count = entry.partition("#")
            ours = hub_names.get(hub_id(base)) if "/" in base and not os.path.exists(base) \
                else None
            entries.append(f"{ours}{hash_sign}{count}" if ours else entry)
        values[field] = entries


def names_family(model_type: str, spec: Any) -> bool:
    """Whether ms-swift 3.x's ``model_type`` (qwen2_5, llama3_1, glm4_0414) names the family of
    ``spec`` (a ModelSpec): it starts with the plugin's family, or each of its parts is one of
    the model type's (glm4_0414: glm4-9b-0414)."""
    parts = set(re.split(r"[-._]", spec.model_type))
    name = model_type.lower()
    return name.startswith(spec.family) or set(re.split(r"[-._]", name)) <= parts


def refuse_family(model_type: str | None, known: list[str]) -> None:
    """ms-swift 3.x's --model_type names a family (qwen2_5); here one model of it."""
    if not model_type or not known or model_type in known:
        return
    family = re.sub(r"(\d)_(\d)", r"\1.\2", model_type.replace("1half", "1.5"))
    members = [name for name in known if name.startswith(f"{family}-")]
    if members:
        raise SdkError(f"--model-type {model_type} names a family (ms-swift 3.x's model_type), "
                       f"and here one model: give one of {', '.join(members)} (`sdk models`), "
                       "or --model with its hub id.")


def resolve_names(values: dict[str, Any], registry: Any) -> dict[str, Any]:
    """ms-swift's model type spellings and LLaMA-Factory's ``model_name_or_path`` (ms-swift
    3.x's ``model``) as registered model types (``registry``: sdk.registry.Registry; None:
    folders only)."""
    known = registry.names("models") if registry is not None else []
    if values.get("model_type"):
        values["model_type"] = model_type_spelling(values["model_type"], known)
    if registry is not None:
        their_names(values, registry)
    tokenizer = values.pop("#tokenizer", None)
    if tokenizer is not None:
        values.update(other_tokenizer(str(tokenizer), values.get("model_id_or_path")
                                      or values.get("#model_name_or_path")
                                      or values.get("#model")))
    given = [key for key in ("#model_name_or_path", "#model") if key in values]
    if not given:
        refuse_family(values.get("model_type"), known)
        return values
    name, path = given[0][1:], values.pop(given[0])
    if len(given) > 1:
        raise SdkError(f"model_name_or_path '{path}' and model '{values['#model']}' are both "
                       "given; keep one.")
    if os.path.isdir(path) or path.startswith((".", "/", "~")):
        refuse_family(values.get("model_type"), known)
        values.setdefault("model_id_or_path", path)
        return values
    specs = registry.specs("models") if registry is not None else ()
    found = [spec for spec in specs
             if any(hub_id(repo) == hub_id(path) for repo in spec.hub_ids.values())]
    matches = [spec.model_type for spec in found]
    chosen = values.get("model_type")
    if chosen and chosen not in known and any(names_family(chosen, spec) for spec in found):
        chosen = None
    if chosen and chosen not in matches:
        raise SdkError(f"{name} '{path}' is no folder here, nor a hub id of "
                       f"--model-type {chosen}: give the folder of its weights, or leave out "
                       "--model-type to pick the model type by its hub id.")
    if matches:
        values["model_type"] = chosen or matches[0]
        return values
    raise SdkError(f"{name} '{path}' is no folder here and no registered model "
                   "type's hub id (`sdk models` lists the model types): download it and give "
                   "its folder with --model-type TYPE, or install the plugin of its family.")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json",
                   "merges.txt", "vocab.txt", "special_tokens_map.json", "added_tokens.json")


def other_tokenizer(tokenizer: str, model: str | None) -> dict[str, Any]:
    """Chinese-LLaMA-Alpaca-2's --tokenizer_name_or_path: the model's own tokenizer (its
    folder, its hub id, or a folder of the same tokenizer files) has no effect; another is
    --tokenizer-id-or-path (which checks that its vocabulary fits the model's embeddings)."""
    if model is not None and same_tokenizer(tokenizer, model):
        say("[sdk] tokenizer_name_or_path has no effect here: it is the model's own tokenizer.")
        return {}
    return {"tokenizer_id_or_path": tokenizer}


def same_tokenizer(tokenizer: str, model: str) -> bool:
    if tokenizer == model:
        return True
    if not (os.path.isdir(tokenizer) and os.path.isdir(model)):
        return False
    if os.path.samefile(tokenizer, model):
        return True

    def files(folder: str) -> dict[str, bytes]:
        return {name: (Path(folder) / name).read_bytes() for name in TOKENIZER_FILES
                if (Path(folder) / name).is_file()}

    theirs = files(tokenizer)
    return bool(theirs) and theirs == files(model)


def markdown() -> str:
    """docs/compat.md: the tables above as a page (tests/test_compat.py checks it is current)."""
    def table(header: str, rows: list[tuple[str, ...]]) -> list[str]:
        cells = header.split("|")
        return [f"| {' | '.join(cells)} |", "|" + "---|" * len(cells),
                *(f"| {' | '.join(row)} |" for row in rows), ""]

    lines = ["# Other tools' flags and config keys", "",
             "Generated from `sdk/compat.py` (`python -c 'from sdk.compat import markdown; "
             "print(markdown(), end=\"\")' > docs/compat.md`); `tests/test_compat.py` checks "
             "that it is current.", "",
             "`sdk sft` and `sdk infer` read these names as flags (`--name value`, `--name=value`; "
             "a flag alone means true) and as keys of `--config` YAML/JSON files, next to their "
             "own options, which keep the same name where the tools share one (`--sft_type`, "
             "`--model_type`, `--dataset`, `--lora_rank`, `--learning_rate`, ...). `sdk sft "
             "--help` lists only sdk's own. Each is translated (one line lists them), accepted "
             "with no effect (one line each says why), or refused with the reason. "
             "`--dry-run` shows the translated plan.", "",
             "## Flags and keys", ""]
    lines += table("name|tool|commands|here", [
        (f"`{name}`", alias.tools, ", ".join(alias.commands), alias.doc)
        for name, alias in sorted(ALIASES.items())])
    lines += ["`sdk infer` also accepts `sdk sft`'s flags that a script passes to both:", ""]
    lines += table("name|here", [(f"`{name}`", f"no effect: {why}")
                                 for name, why in INFER_IGNORES.items()])
    lines += ["## Values", "", "Their spellings of values of flags that sdk shares:", ""]
    lines += table("flag|theirs|ours", [
        (f"`{field}`", f"`{theirs}`", f"`{ours}`") for field, spellings in THEIR_VALUES.items()
        for theirs, ours in spellings.items() if theirs != ours])
    lines += ["A LLaMA-Factory configuration or command line without `dataset_dir` reads its "
              "dataset names from `data/dataset_info.json` when there is one, as "
              "LLaMA-Factory does.", "",
              "A LLaMA-Factory configuration or command line writes its run into `output_dir` "
              "as given (`--output-dir-as-run`: `checkpoint-N` in it), not into "
              "`OUTPUT_DIR/<model-type>/v<N>-<time>/`; a folder that holds anything is refused "
              "unless `overwrite_output_dir` (which deletes the previous run's files only) or "
              "`resume_from_checkpoint`.", ""]
    lines += ["Chinese-LLaMA-Alpaca-2's run_sft.sh passes transformers' Trainer flags: those "
              "that are sdk's too (`--seed`, `--max_steps`, `--learning_rate`, `--deepspeed "
              "FILE`, ...) are ours, and those LLaMA-Factory shares (`model_name_or_path`, "
              "`do_train`, `do_eval`, `fp16`, `per_device_train_batch_size`, "
              "`overwrite_output_dir`, `preprocessing_num_workers`, `evaluation_strategy`, "
              "`save_strategy`) read as above. With `--peft_path` the adapter trains on with its "
              "own rank, targets and modules to save, as the script does. Chinese-Vicuna's "
              "finetune.py fixes its other settings in code, not flags (a batch of 128 as 4 x 32 "
              "accumulated, 3 epochs, learning rate 3e-4, 256 tokens, LoRA r 8, alpha 16, "
              "dropout 0.05 on q_proj and v_proj, an 8-bit base): give those you want as sdk's "
              "flags (`--batch-size 4 --gradient-accumulation-steps 32 --num-train-epochs 3 "
              "--learning-rate 3e-4 --max-length 256 --lora-alpha 16 --lora-dropout 0.05 "
              "--lora-target-modules q_proj v_proj --quantization-bit 8`).", ""]
    lines += ["`init_lora_weights pissa_niter_N` (peft's and ms-swift's): `--init-lora-weights "
              "pissa --pissa-niter N`; `lora_target_modules DEFAULT` or `AUTO` (ms-swift's): "
              "the model type's own targets.", ""]
    lines += ["## Template names", "",
              "ms-swift's `template_type` and LLaMA-Factory's `template` (read as "
              "LLaMA-Factory's when the file or command line has one of "
              + ", ".join(f"`{key}`" for key in LF_MARKERS)
              + "), and ms-swift 3.x's `template` when no template here has that name; a "
              "name not listed is ours as it is (or, ms-swift 3.x's, with a digit, `_` and a digit "
              "read as a version: `llama3_2` is `llama3.2`).", ""]
    lines += table("theirs|ours", [
        (f"`{theirs}`", f"`{ours}`" if ours else "the model type's own",
         ) for theirs, ours in sorted(LF_TEMPLATES.items())])
    lines += ["## Model types", "",
              "ms-swift's spellings: `1half` is `1.5`, a digit, `_` and a digit are a "
              "version (`qwen2_5` is `qwen2.5`, `llama3_1` is `llama3.1`), Mistral's `-vN` "
              "is `-v0.N`; and:", ""]
    lines += table("theirs|ours", [(f"`{theirs}`", f"`{ours}`")
                                   for theirs, ours in sorted(MODEL_TYPES.items())])
    lines += ["LLaMA-Factory's `model_name_or_path` and ms-swift 3.x's `model`: a folder is "
              "`--model-id-or-path` (give `--model-type`); a hub id is the registered model "
              "type with that hub id (ms-swift 3.x's `model_type`, a family such as `qwen2_5`, "
              "may be given with it; without a hub id it is refused, naming the family's "
              "model types).", "", "## Datasets", "",
              "A `--dataset` / `--val-dataset` entry that is a hub id of a registered dataset "
              "(`AI-ModelScope/alpaca-gpt4-data-zh#500`) is that dataset (`alpaca-zh#500`); "
              "and:", ""]
    lines += table("theirs|ours", [(f"`{theirs}`", f"`{ours}`")
                                   for theirs, ours in sorted(DATASETS.items())])
    return "\n".join(lines) + "\n"
