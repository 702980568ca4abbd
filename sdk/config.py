"""One typed config per command: dataclass fields become CLI flags, config-file keys and the
arguments saved with every run.

Every flag is accepted as ``--flag-name`` and ``--flag_name``. A list flag takes several
values (``--dataset a b``, ``--dataset a,b`` or the flag repeated). A boolean flag works
alone (``--gradient-checkpointing``) or with a value
(``--gradient_checkpointing true``). Values come from, in
rising priority: the defaults here, ``--config FILE`` (YAML or JSON), the command line.
"""

import dataclasses
import difflib
import functools
import json
import math
import os
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdk import compat
from sdk.errors import SdkError

# transformers' SchedulerType values, listed here so that checking them imports nothing heavy
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                 "constant_with_warmup", "inverse_sqrt", "reduce_lr_on_plateau",
                 "cosine_with_min_lr", "warmup_stable_decay")
# --report-to trackers (transformers' integrations) and the packages that provide them
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",),
                    "swanlab": ("swanlab",), "mlflow": ("mlflow",)}
ATTENTION_KERNELS = ("auto", "sdpa", "eager", "flash_attention_2", "flash_attention_3",
                     "flex_attention")

PUSH_TRAINING_STATE_HELP = (
    "Also push what only resuming needs: the optimizer, scheduler, RNG and trainer state, "
    "DeepSpeed's shards, AdaLoRA's state and PiSSA/OLoRA's unconverted adapter.")

# Flags of ms-swift, LLaMA-Factory, Chinese-LLaMA-Alpaca and transformers' scripts, and what
# they are called here, for the message about an unknown flag.
OTHER_TOOLS_FLAGS = {
    "per_device_train_batch_size": "batch-size", "per_device_eval_batch_size": "batch-size",
    "micro_batch_size": "batch-size", "cutoff_len": "max-length",
    "model_max_length": "max-length", "max_seq_length": "max-length",
    "finetuning_type": "sft-type", "train_type": "sft-type", "template_type": "template",
    "model_name_or_path": "model-id-or-path", "custom_train_dataset_path": "dataset",
    "train_file": "dataset", "data_path": "dataset", "custom_val_dataset_path": "val-dataset",
    "validation_file": "val-dataset", "val_size": "split-dataset-ratio",
    "dataset_test_ratio": "split-dataset-ratio", "lr": "learning-rate",
    "epochs": "num-train-epochs",
    "lora_r": "lora-rank", "lora_target": "lora-target-modules",
    "lora_trainable": "lora-target-modules", "modules_to_save": "lora-modules-to-save",
    "bf16": "dtype bf16", "fp16": "dtype fp16", "torch_dtype": "dtype",
    "load_in_4bit": "quantization-bit 4", "load_in_8bit": "quantization-bit 8",
    "flash_attn": "attn-impl", "use_flash_attn": "attn-impl flash_attention_2",
    "adapter_name_or_path": "adapter", "checkpoint_dir": "adapter",
    "lorap_lr_ratio": "loraplus-lr-ratio", "enable_liger_kernel": "use-liger-kernel",
    "init_weights": "init-lora-weights", "pissa_init": "init-lora-weights pissa",
    "pissa_iter": "pissa-niter",
    "pissa_convert": "init-lora-weights pissa (checkpoints hold the converted adapter)",
}

# --help lists a command's options under these headings, in this order (what a command does
# first: sdk infer's generation options come right after the model)
OPTION_GROUPS = {"model": "Model", "generation": "Generation",
                 "prediction": "Prediction (--dataset)", "server": "Server", "data": "Data",
                 "tuner": "Tuner", "training": "Training", "performance": "Performance",
                 "checkpoints": "Checkpoint", "output": "Output", "hub": "Hub",
                 "logging": "Logging and evaluation", "other": "Other"}


def arg(default: Any, help: str, choices: tuple[str, ...] | None = None,
        at_least: float | None = None, above: float | None = None,
        below: float | None = None, at_most: float | None = None,
        secret: bool = False, path: str | None = None, group: str | None = None,
        kept_on_resume: bool = False) -> Any:
    """A field with its help text and the values it accepts (checked by build_arguments).
    A ``secret`` value (a token) is never saved with a run. ``path`` marks a value that names
    something on this machine, saved absolute (see absolute_paths): "path" a file or folder,
    "datasets" dataset entries that may be files, "name=path" NAME=PATH pairs. ``group``: the
    heading of OPTION_GROUPS the flag is listed under in ``--help``. ``kept_on_resume``: the
    value shapes the trainable weights or the optimizer state, so a resumed run must keep the
    one its checkpoint was trained with (the saved state would not fit another)."""
    metadata = {"help": help, "choices": choices, "at_least": at_least, "above": above,
                "below": below, "at_most": at_most, "secret": secret, "path": path,
                "group": group, "kept_on_resume": kept_on_resume}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# --gguf-type: the types gguf's numpy quantizers write (k-quants need llama.cpp's C quantizer).
GGUF_TYPES = ("f16", "bf16", "q8_0", "q5_0", "q4_0")
PUSH_GGUF_HELP = ("Also upload the model merged into one GGUF file of this type (and its "
                  "Ollama Modelfile), as `sdk export --to gguf` writes it, beside the "
                  "checkpoint's files.")


@dataclass
class ModelArguments:
    model_type: str | None = arg(None, "Model type to load (see `sdk models`).", group="model")
    model_id_or_path: str | None = arg(
        None, "Local model folder to use instead of the model type's hub copy.", path="path",
        group="model")
    template: str | None = arg(None, "Chat template (default: the model type's).", group="model")
    system: str | None = arg(None, "System prompt (default: the template's).", group="model")
    enable_thinking: bool | None = arg(
        None, "true|false: passed to the chat template as enable_thinking, as "
        "apply_chat_template(enable_thinking=...) does (qwen3: false writes an empty <think> "
        "block into the generation prompt, so a reply's answer alone is trained and "
        "generated). Default: not passed (the template's own default).", group="model")
    dtype: str = arg("auto", "Weights dtype; auto = bf16/fp16 on GPU, fp32 on CPU.",
                     ("auto", "bf16", "fp16", "fp32"), group="model")
    trust_remote_code: bool = arg(False, "Allow model repositories to run their own code.",
                                  group="model")
    attn_impl: str = arg(
        "auto", "Attention kernel. auto: flash_attention_2 on a CUDA GPU in bf16/fp16 when "
        "flash-attn is installed, else what transformers picks (sdpa where the model has it, "
        "else eager).", ATTENTION_KERNELS, group="performance")
    quantization_bit: int | None = arg(
        None, "Load the base model in 4 or 8 bits with bitsandbytes (QLoRA; on a CUDA GPU, or "
        "slowly on a CPU); 0: not quantized.", (0, 4, 8), group="model", kept_on_resume=True)
    bnb_4bit_comp_dtype: str = arg("auto", "Compute dtype of 4-bit layers (auto: --dtype).",
                                   ("auto", "bf16", "fp16", "fp32"), group="model")
    bnb_4bit_quant_type: str = arg("nf4", "4-bit data type.", ("nf4", "fp4"), group="model")
    bnb_4bit_use_double_quant: bool = arg(True, "Quantize the 4-bit scales too.", group="model")
    rope_scaling: str | None = arg(
        None, "Stretch the model's rotary positions to train on and answer sequences longer "
        "than its window: linear, dynamic (NTK) or yarn (sdk infer --ckpt-dir: the run's).",
        ("linear", "dynamic", "yarn"), group="model")
    rope_factor: float | None = arg(
        None, "How many times --rope-scaling stretches the window (sdk sft default: "
        "--max-length over the model's window, rounded up).", above=1, group="model")
    hub: str | None = arg(None, "Hub to download models and datasets from and push to (see "
                          "`sdk hubs`; default: $SFT_SDK_HUB, else huggingface; a checkpoint "
                          "reloads from the hub it was trained with).", group="hub")


@dataclass
class SftArguments(ModelArguments):
    tokenizer_id_or_path: str | None = arg(
        None, "Train with this tokenizer folder instead of the model's (e.g. an extended "
        "vocabulary); it must fit the model's embeddings. Checkpoints keep it.", path="path",
        group="model", kept_on_resume=True)
    sft_type: str = arg("lora", "Tuner (see `sdk tuners`).", group="tuner")
    dataset: list[str] = arg([], "Dataset names (see `sdk datasets`) or .json/.jsonl files; "
                             "NAME#N samples N rows (deterministic under --seed).",
                             path="datasets", group="data")
    dataset_format: str | None = arg(None, "Record format; detected when left out.", group="data")
    dataset_info: str | None = arg(None, "A dataset_info.json (LLaMA-Factory / "
                                   "ChatGLM-Efficient-Tuning) that defines the --dataset "
                                   "names.", path="path", group="data")
    dataset_path: list[str] = arg(
        [], "NAME=PATH: read the registered dataset NAME from a local file or folder instead "
        "of its hub repository (e.g. alpaca-zh=/data/alpaca_gpt4_data_zh.json).",
        path="name=path", group="data")
    max_samples: int | None = arg(
        None, "Use at most the first N rows of each --dataset entry (after NAME#N sampling), "
        "as LLaMA-Factory's max_samples.", at_least=1, group="data")
    columns: list[str] = arg(
        [], "FIELD=OURS: rename record fields before the format is detected, e.g. "
        "question=instruction answer=output.", group="data")
    val_dataset: list[str] = arg([], "Held-out datasets to compute eval loss on (like "
                                 "--dataset).", path="datasets", group="data")
    split_dataset_ratio: float = arg(0.0, "Without --val-dataset, hold out this fraction of "
                                     "the training rows (below 1), or this many rows (a whole "
                                     "number from 1), for eval loss.", at_least=0,
                                     group="data")
    held_out_sample: int | None = arg(
        None, "Evaluate on N rows (drawn under --seed) of those --split-dataset-ratio holds "
        "out; the others are neither trained nor evaluated on (ms-swift's "
        "val_dataset_sample).", at_least=1, group="data")
    eval_steps: int | None = arg(None, "Eval every N steps when there is held-out data "
                                 "(default: --save-steps).", at_least=1, group="logging")
    model_name: list[str] = arg(
        [], "Name for identity data ({{name}}: self-cognition, LLaMA-Factory's identity): "
        "one name, or a Chinese and an English one.", group="data")
    model_author: list[str] = arg(
        [], "Author for identity data ({{author}}): one, or a Chinese and an English one.",
        group="data")
    output_dir: str = arg("output", "Runs go to OUTPUT_DIR/<model-type>/v<N>-<time>/ "
                          "(--output-dir-as-run: into OUTPUT_DIR itself).", path="path",
                          group="checkpoints")
    output_dir_as_run: bool = arg(
        False, "Write the run into --output-dir itself (checkpoint-N in it), as HF Trainer and "
        "LLaMA-Factory do (a LLaMA-Factory config or command line sets it); a folder that "
        "holds anything is refused unless --overwrite-output-dir or --resume-from-checkpoint.",
        group="checkpoints")
    overwrite_output_dir: bool = arg(
        False, "With --output-dir-as-run: train a new run in a folder that holds a previous "
        "one; the previous run's files (checkpoints, log, sft_args.json) are deleted, other "
        "files kept.", group="checkpoints")
    dataset_num_proc: int = arg(1, "Processes that tokenize the data (datasets' map).",
                                at_least=1, group="performance")
    skip_bad_records: bool = arg(False, "Leave out records that cannot be read or converted "
                                 "(counted, with their first locations) instead of stopping.",
                                 group="data")
    max_length: int = arg(2048, "Longest training sequence in tokens (0 or -1: no limit).",
                          at_least=-1, group="data")
    truncation_strategy: str = arg(
        "truncation_right", "Rows longer than --max-length: delete them, or cut the start "
        "(truncation_left) or the end (truncation_right).",
        ("delete", "truncation_left", "truncation_right"), group="data")
    loss_scope: str = arg("all", "Which assistant turns carry loss.", ("all", "last"), group="data")
    num_train_epochs: float = arg(1.0, "Passes over the training data.", above=0, group="training")
    max_steps: int = arg(-1, "Stop after this many optimizer steps (overrides epochs when "
                         "above 0).", group="training")
    batch_size: int = arg(1, "Sequences per device per step.", at_least=1, group="training")
    packing: bool = arg(True, "Padding-free batches: a batch's samples joined into one row, "
                        "each attending only to itself (false: pad to the longest sample). "
                        "Models and tuners that cannot be packed pad instead, with a notice.",
                        group="performance")
    max_tokens_per_batch: int | None = arg(
        None, "Batches of as many samples as fit in N tokens (padding counted without "
        "--packing) instead of --batch-size; a longer sample gets a batch of its own. "
        "Default on a CUDA GPU (unless --batch-size is given): 4096 tokens from 40 GiB of GPU "
        "memory, 2048 from 20, else 1024; on a CPU, --batch-size rows. 0: --batch-size rows.",
        at_least=0, group="training")
    group_by_length: bool = arg(False, "Batch samples of similar length together.",
                                group="training")
    gradient_accumulation_steps: int = arg(16, "Steps whose gradients are summed.", at_least=1,
                                           group="training")
    learning_rate: float | None = arg(None, "Peak learning rate (lora 1e-4, full 2e-5).",
                                      above=0, group="training")
    weight_decay: float = arg(0.01, "AdamW weight decay.", at_least=0, group="training")
    optim: str | None = arg(
        None, "Optimizer, by its transformers name: adamw_torch, adamw_torch_fused, adafactor, "
        "sgd, ...; adamw_8bit, paged_adamw_8bit, paged_adamw_32bit and lion_8bit need "
        "bitsandbytes (default: transformers' AdamW).", group="training", kept_on_resume=True)
    loraplus_lr_ratio: float | None = arg(
        None, "LoRA+: train the LoRA B matrices at this many times the learning rate (16 is "
        "usual; LoRA tuners only).", above=0, group="tuner", kept_on_resume=True)
    lr_scheduler_type: str = arg("cosine", "Learning-rate schedule.", LR_SCHEDULERS,
                                 group="training")
    warmup_ratio: float = arg(0.05, "Fraction of steps spent warming up.", at_least=0, below=1,
                              group="training")
    max_grad_norm: float = arg(1.0, "Gradient clipping norm (0: no clipping).", at_least=0,
                               group="training")
    gradient_checkpointing: bool = arg(False, "Recompute activations to save memory.",
                                       group="performance")
    deepspeed: str | None = arg(
        None, "Shard the training state over the processes with DeepSpeed ZeRO (pip install "
        "deepspeed): zero2 (optimizer state and gradients), zero3 (the weights too), "
        "zero2_offload, zero3_offload (kept in CPU memory), or a DeepSpeed JSON file.",
        group="performance", kept_on_resume=True)
    fsdp: str | None = arg(
        None, "Shard the weights, gradients and optimizer state over the processes with "
        "PyTorch FSDP2 (GPUs): full_shard, or shard_grad_op (weights whole until the backward: "
        "faster, more memory); add offload to keep the shards in CPU memory (\"full_shard "
        "offload\"); auto_wrap is accepted (each decoder layer is always its own unit).",
        group="performance", kept_on_resume=True)
    fsdp_config: str | None = arg(
        None, "transformers' fsdp_config for --fsdp: a JSON file or a JSON object (keys with "
        "or without fsdp_).", group="performance")
    offload_activations: bool = arg(
        False, "Keep the activations saved for the backward in CPU memory (implies "
        "--gradient-checkpointing): for contexts too long for GPU memory; slower.",
        group="performance")
    loss_impl: str = arg(
        "auto", "How the loss is computed: chunked (the output layer and cross-entropy only on "
        "trained tokens, in chunks: no full logits in memory), standard (the model's own, from "
        "full fp32 logits), auto (liger-kernel's fused kernel on CUDA when installed, else "
        "chunked; standard where the model needs it).", ("auto", "chunked", "standard"),
        group="performance")
    use_liger_kernel: bool | None = arg(
        None, "liger-kernel's Triton RMSNorm, SwiGLU and RoPE kernels in place of the model's "
        "own (CUDA GPU, pip install liger-kernel; llama, qwen2, mistral and the other families "
        "it covers): less memory kept for the backward. The loss is --loss-impl's. Default: on "
        "where they can run (a CUDA GPU, liger-kernel installed, a family it covers); false: "
        "off.",
        group="performance")
    adapter: str | None = arg(
        None, "Continue training this peft adapter (a folder with adapter_config.json and "
        "adapter_model.safetensors or .bin, or an older tool's pytorch_model.bin).",
        path="path", group="model", kept_on_resume=True)
    logging_steps: int = arg(5, "Log every N steps.", at_least=1, group="logging")
    report_to: list[str] = arg(
        [], "Also send the logs to these trackers (their packages installed): tensorboard "
        "(event files under <run>/runs/), wandb, swanlab, mlflow; none: only logging.jsonl "
        "(as transformers' report_to none).", (*TRACKER_PACKAGES, "none"), group="logging")
    save_steps: int = arg(50, "Save a checkpoint every N steps (and at the end).", at_least=1,
                          group="checkpoints")
    save_total_limit: int = arg(2, "Keep at most N checkpoints (0 or -1: keep all).",
                                group="checkpoints")
    only_save_model: bool = arg(False, "Checkpoints hold the model or adapter only, without "
                                "optimizer state: smaller, but training cannot resume from them.",
                                group="checkpoints")
    resume_from_checkpoint: str | None = arg(
        None, "Resume an interrupted run: a checkpoint folder, or auto for the newest complete "
        "checkpoint of the newest run of this model type under --output-dir (of --output-dir "
        "itself with --output-dir-as-run).", path="path",
        group="checkpoints")
    neftune_noise_alpha: float | None = arg(
        None, "NEFTune: add uniform noise of this scale to the input embeddings while "
        "training (5 is usual).", above=0, group="training")
    push_to_hub: bool = arg(False, "Upload the trained model to --hub (see "
                            "--push-hub-strategy).", group="hub")
    hub_model_id: str | None = arg(None, "Repository to push to, e.g. user/my-model.", group="hub")
    hub_private_repo: bool = arg(True, "Create the repository as private.", group="hub")
    hub_token: str | None = arg(None, "Token for --hub (default: the hub's usual token "
                                "environment variable or login).", secret=True, group="hub")
    push_hub_strategy: str = arg(
        "end", "What to push and when: end (the final model), push_best and push_last (the "
        "best / last checkpoint at the end), checkpoint (each checkpoint, replacing the "
        "last), all_checkpoints (each checkpoint in its own folder).",
        ("end", "push_best", "push_last", "checkpoint", "all_checkpoints"), group="hub")
    push_training_state: bool = arg(
        False, PUSH_TRAINING_STATE_HELP, group="hub")
    push_gguf: str | None = arg(None, PUSH_GGUF_HELP, (*GGUF_TYPES,), group="hub")
    seed: int = arg(42, "Random seed.", at_least=0, below=2**32, group="training")
    dataloader_num_workers: int = arg(0, "Data loader worker processes.", at_least=0,
                                      group="performance")
    predict_with_generate: bool = arg(
        False, "After training, generate replies for the held-out rows into "
        "<run>/predictions/ and score them (ROUGE, BLEU).", group="logging")
    max_new_tokens: int = arg(512, "With --predict-with-generate: longest reply in tokens.",
                              at_least=1, group="logging")


@dataclass
class GenerationArguments(ModelArguments):
    """What `sdk infer` and `sdk deploy` share: the model to load and how it decodes."""

    ckpt_dir: str | None = arg(None, "Checkpoint (or run) folder written by `sdk sft`, or a "
                               "model folder written by `sdk export`.", group="model")
    max_new_tokens: int = arg(512, "Longest reply in tokens.", at_least=1, group="generation")
    do_sample: bool = arg(False, "Sample instead of greedy decoding.", group="generation")
    temperature: float = arg(0.7, "Sampling temperature (with --do-sample).", above=0,
                             group="generation")
    top_k: int = arg(20, "Sample among the K likeliest tokens (0: all).", at_least=0,
                     group="generation")
    top_p: float = arg(0.9, "Sample within this probability mass.", above=0, at_most=1,
                       group="generation")
    repetition_penalty: float = arg(1.0, "Penalty for repeated tokens.", above=0,
                                    group="generation")
    num_beams: int = arg(1, "Beam search with this many beams (above 1: no streaming).",
                         at_least=1, group="generation")
    no_repeat_ngram_size: int = arg(0, "Never repeat an n-gram of this many tokens (0: off).",
                                    at_least=0, group="generation")
    merge_lora: bool = arg(False, "Merge the --ckpt-dir adapter into its base model in memory "
                           "before generating (faster; a 4/8-bit base is loaded unquantized).",
                           group="model")
    seed: int = arg(42, "Random seed.", at_least=0, below=2**32, group="generation")
    infer_backend: str = arg(
        "transformers", "What generates: transformers (any device), or vllm (a CUDA GPU, "
        "`pip install vllm`): the base model with the checkpoint's LoRA adapter, or an "
        "export, served by vLLM with sdk's template.", ("transformers", "vllm"),
        group="performance")


@dataclass
class InferArguments(GenerationArguments):
    query: str | None = arg(None, "Ask one question and exit; without it, chat.",
                            group="generation")
    stream: bool = arg(True, "Print the reply while it is generated.", group="generation")
    dataset: list[str] = arg(
        [], "Predict a reply for every row of these datasets (like `sdk sft --dataset`) into "
        "--predictions-file, scored against the rows' own replies (ROUGE, BLEU).",
        group="prediction")
    val_dataset_from_run: bool = arg(
        False, "Predict the rows the --ckpt-dir run held out (its --val-dataset or "
        "--split-dataset-ratio split).", group="prediction")
    predictions_file: str | None = arg(
        None, "Where predictions go, one JSON line a row; rerun to resume. Default: "
        "<run>/predictions/<checkpoint>-<dataset>.jsonl.", group="prediction")
    batch_size: int = arg(8, "Rows generated together with --dataset or "
                          "--val-dataset-from-run.", at_least=1, group="prediction")
    truncate_long_prompts: bool = arg(
        False, "With --dataset or --val-dataset-from-run: a prompt that fills the model's "
        "window loses its first tokens (it keeps room for a --max-new-tokens reply, at least "
        "half the window) instead of stopping the run at its row.", group="prediction")


@dataclass
class DeployArguments(GenerationArguments):
    """The decoding flags are the server's defaults; a request's own settings win."""

    host: str = arg("127.0.0.1", "Address to listen on (0.0.0.0: every network interface).",
                    group="server")
    port: int = arg(8000, "Port to listen on (0: any free one).", at_least=0, below=65536,
                    group="server")
    served_model_name: str | None = arg(
        None, "The model name clients send and /v1/models lists (default: the --ckpt-dir "
        "run's folder name, else the --model-type).", group="server")
    api_key: str | None = arg(
        None, "Answer /v1 requests only with this key as a bearer token (the OpenAI client's "
        "api_key; default: $SFT_SDK_API_KEY, else none). /health and /metrics stay open.",
        secret=True, group="server")
    cors_origins: list[str] = arg(
        [], "Web origins whose pages may call the API from a browser (CORS), e.g. "
        "https://app.example.com, or * for any; default: none.", group="server")
    max_concurrency: int = arg(16, "Replies generated together (continuous batching; 1: one at "
                               "a time; --infer-backend vllm schedules its own).", at_least=1,
                               group="server")
    max_queue: int = arg(64, "Replies waiting for a place past --max-concurrency; a request "
                         "beyond them is answered 429 with Retry-After.", at_least=0,
                         group="server")


@dataclass
class ExportArguments:
    ckpt_dir: str | None = arg(None, "Checkpoint (or run) folder written by `sdk sft`.",
                               group="model")
    merge_lora: bool = arg(False, "Merge the checkpoint's adapter into its base model (a base "
                           "trained in 4/8 bits is loaded unquantized for this).", group="model")
    output_dir: str | None = arg(None, "Folder to write the model to (default: next to the "
                                 "checkpoint, <checkpoint>-merged or <checkpoint>-export).",
                                 group="output")
    dtype: str = arg("auto", "Weights dtype; auto = the one the checkpoint was trained in (a "
                     "4/8-bit base: its compute dtype), else bf16/fp16 on GPU, fp32 on CPU.",
                     ("auto", "bf16", "fp16", "fp32"), group="model")
    model_id_or_path: str | None = arg(
        None, "With --merge-lora: the base model folder, if no longer where the checkpoint "
        "was trained from.", group="model")
    overwrite: bool = arg(False, "Replace an earlier export in --output-dir (never other "
                          "files).", group="output")
    to: str = arg("transformers", "Format: transformers (safetensors model folder) or gguf "
                  "(one .gguf file for llama.cpp, Ollama, LM Studio; an adapter is merged).",
                  ("transformers", "gguf"), group="output")
    gguf_type: str = arg("f16", "With --to gguf: what the weights are stored as (norms stay "
                         "f32).", GGUF_TYPES, group="output")
    ollama: bool = arg(False, "With --to gguf: also write an Ollama Modelfile (chat template, "
                       "default system prompt, stop words) beside the .gguf.", group="output")


def fields_of(cls: type, name: str, names: Sequence[str], doc: str,
              regroup: dict[str, str]) -> type:
    """A dataclass with just ``names`` of ``cls``'s fields (same defaults, help, checks), the
    fields of ``regroup`` listed under another --help heading."""
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    chosen = [(f.name, f.type, field(
        default=f.default, default_factory=f.default_factory,
        metadata={**f.metadata, "group": regroup.get(f.name, f.metadata["group"])}))
              for f in map(by_name.__getitem__, names)]
    made = dataclasses.make_dataclass(name, chosen)
    made.__doc__ = doc
    made.__module__ = __name__
    return made


# The flags of `sdk sft` that change what `sdk datasets preview` shows, and only those, so its
# --help lists nothing it would ignore.
PreviewArguments = fields_of(
    SftArguments, "PreviewArguments",
    ("model_type", "model_id_or_path", "template", "system", "enable_thinking",
     "trust_remote_code", "hub", "hub_token", "dataset", "dataset_format", "dataset_info",
     "dataset_path", "columns", "model_name", "model_author", "skip_bad_records", "max_length",
     "truncation_strategy", "loss_scope", "seed"),
    "What `sdk datasets preview` reads: the data and template as `sdk sft` would.",
    regroup={"seed": "data"})  # a preview's seed only picks the rows of NAME#N


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def with_options(cls: type, *options: type) -> type:
    """``cls`` with the fields of the ``options`` dataclasses (a tuner's, hub's or format's own
    flags) added: one flat arguments class, so code reads ``args.lora_rank`` and a run saves
    its options under their own names. A name already present keeps its first definition
    (several tuners may share an options class); made once per combination."""
    if not options:
        return cls
    present = {f.name for f in dataclasses.fields(cls)}
    added = []
    for option_class in options:
        types = field_types(option_class)
        for f in dataclasses.fields(option_class):
            if f.name not in present:
                present.add(f.name)
                added.append((f.name, types[f.name], field(
                    default=f.default, default_factory=f.default_factory,
                    metadata=f.metadata)))
    return dataclasses.make_dataclass(cls.__name__, added, bases=(cls,))


def base_type(annotation: Any) -> Any:
    """``int | None`` -> int, ``list[str]`` -> list."""
    if typing.get_origin(annotation) is list:
        return list
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def key_value_pairs(flag: str, values: list[str], example: str) -> dict[str, str]:
    """``KEY=VALUE`` items of a list flag as a dict; a malformed item names the flag and
    shows ``example``."""
    pairs = {}
    for item in values:
        key, equals, value = item.partition("=")
        if not equals or not key or not value:
            raise SdkError(f"{flag} '{item}': give {example}.")
        pairs[key] = value
    return pairs


def read_config_file(path: str, cls: type) -> dict[str, Any]:
    """Keys of a YAML/JSON config file, normalised to field names; unknown keys are errors."""
    import yaml

    file = Path(path)
    if not file.is_file():
        raise SdkError(f"Config file '{path}' (--config) does not exist.")
    kind = "JSON" if file.suffix.lower() == ".json" else "YAML"
    try:
        text = file.read_text(encoding="utf-8")
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except UnicodeDecodeError as error:
        raise SdkError(f"Config file '{path}' is not UTF-8 text ({error.reason} at byte "
                       f"{error.start}).") from None
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise SdkError(f"Config file '{path}' is not valid {kind}: {error}") from None
    if not isinstance(data, dict):
        raise SdkError(f"Config file '{path}' should hold a mapping of option: value.")
    names = [f.name for f in dataclasses.fields(cls)]
    field_of = {key: str(key).replace("-", "_") for key in data}  # dashes or underscores
    foreign = compat.foreign_keys(field_of.values(), names, command_of(cls))
    translated = compat.translate({field_of[key]: data.pop(key) for key in list(data)
                                   if field_of[key] in foreign}, command_of(cls),
                                  f"Config file '{path}'")
    unknown = [unknown_key(str(key), names) for key in data if field_of[key] not in names]
    if unknown:  # all at once: a config of another tool has several
        raise SdkError(f"Config file '{path}': unknown option{'s' if len(unknown) > 1 else ''} "
                       f"{', '.join(unknown)}. `sdk {command_of(cls)} --help` lists the "
                       "options.")
    spellings: dict[str, list[str]] = {}
    for key in data:
        spellings.setdefault(field_of[key], []).append(f"'{key}'")
    for made in translated:  # another tool's name for one of ours given too: one would win
        if made in spellings:
            spellings[made].append("another tool's name for it")
    twice = [" and ".join(keys) for keys in spellings.values() if len(keys) > 1]
    if twice:  # one would silently win
        raise SdkError(f"Config file '{path}' sets an option twice: {'; '.join(twice)}. "
                       "Keep one of each.")
    types = field_types(cls)
    return {**translated, **{field_of[key]: coerce(value, types[field_of[key]],
                                                   f"Config file '{path}', option '{key}'")
                             for key, value in data.items()}}


def unknown_key(key: str, names: list[str]) -> str:
    """``'key'`` with what it is called here (another tool's name) or a close name."""
    ours = OTHER_TOOLS_FLAGS.get(key.replace("-", "_"), "").split(maxsplit=1)
    if ours and ours[0].replace("-", "_") in names:
        setting = ours[0].replace("-", "_") + (f": {ours[1]}" if len(ours) > 1 else "")
        return f"'{key}' (here: {setting})"
    close = difflib.get_close_matches(key.replace("-", "_"), names, n=1)
    return f"'{key}' (did you mean '{close[0]}'?)" if close else f"'{key}'"


def command_of(cls: type) -> str:
    return cls.__name__.removesuffix("Arguments").lower()


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """YAML reads ``1e-4`` as text; convert scalars to the field's type."""
    kind = base_type(annotation)
    nested = (dict, list)
    if kind is list:  # a mapping would silently become its keys
        if isinstance(value, dict) or (isinstance(value, list)
                                       and any(isinstance(item, nested) for item in value)):
            raise SdkError(f"{where}: expected a list of values (or one text, commas between "
                           f"values), got {value!r}.")
        return value
    if value is None:
        return value
    if isinstance(value, nested):
        raise SdkError(f"{where}: expected one value, got {value!r}.")
    if kind is str:
        if not isinstance(value, str):
            raise SdkError(f"{where}: expected text, got {value!r}; quote it.")
        return value
    if isinstance(value, bool) and kind is not bool:
        raise SdkError(f"{where}: expected {kind.__name__}, got {value!r}.")
    if isinstance(value, kind):
        return value
    try:
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ValueError(value)
        if kind is bool:
            text = str(value).strip().lower()
            if text not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return text in ("true", "1", "yes")
        return kind(value)
    except (TypeError, ValueError):
        raise SdkError(f"{where}: expected {kind.__name__}, got {value!r}.") from None


def build_arguments(cls: type, cli_values: dict[str, Any], config_file: str | None = None,
                    foreign: dict[str, Any] | None = None, registry: Any = None):
    """Defaults < config file < command line. ``cli_values`` holds only flags that were given;
    ``foreign``: other tools' flags on the command line (sdk.compat), read as ours, which our
    own flags of the same setting must not contradict. With a ``registry``, other tools'
    model names become model types (without one, only folders are understood)."""
    values = read_config_file(config_file, cls) if config_file else {}
    if foreign:
        cli_values = dict(cli_values)
        if "template" in cli_values and compat.llama_factory(foreign):
            foreign["template"] = cli_values.pop("template")  # LLaMA-Factory's name
        translated = compat.translate(foreign, command_of(cls), "The command line")
        both = [key for key in translated if key in cli_values
                and cli_values[key] != translated[key]]
        if both:
            raise SdkError(f"--{both[0].replace('_', '-')} {cli_values[both[0]]} and another "
                           f"tool's flag that means {translated[both[0]]} are both given; keep "
                           "one.")
        values.update(translated)
    values.update(cli_values)
    values = compat.resolve_names(compat.finish(values), registry)
    types = field_types(cls)
    for name, value in values.items():
        values[name] = value = coerce(value, types[name], f"--{name.replace('_', '-')}")
        if base_type(types[name]) is list:
            values[name] = compat.split_list(value)
    arguments = cls(**values)
    for f in dataclasses.fields(cls):
        check_value(f, getattr(arguments, f.name))
    return arguments


def check_value(f: dataclasses.Field, value: Any) -> None:
    if value is None:
        return
    flag = "--" + f.name.replace("_", "-")
    meta = f.metadata
    for item in value if isinstance(value, list) else [value]:
        # NaN passes every range check below (each comparison is false) and infinity passes
        # the open-ended ones; either trains to NaN weights without a word.
        if isinstance(item, float) and not math.isfinite(item):
            raise SdkError(f"{flag} must be a finite number; got {item}.")
        if meta["choices"] and item not in meta["choices"]:
            allowed = ", ".join(map(str, meta["choices"]))
            raise SdkError(f"{flag} must be one of {allowed}; got '{item}'.")
    if meta["at_least"] is not None and value < meta["at_least"]:
        raise SdkError(f"{flag} must be at least {meta['at_least']}; got {value}.")
    if meta["above"] is not None and value <= meta["above"]:
        raise SdkError(f"{flag} must be above {meta['above']}; got {value}.")
    if meta["below"] is not None and value >= meta["below"]:
        raise SdkError(f"{flag} must be below {meta['below']}; got {value}.")
    if meta["at_most"] is not None and value > meta["at_most"]:
        raise SdkError(f"{flag} must be at most {meta['at_most']}; got {value}.")


def changed_fields(arguments: Any, names: Sequence[str]) -> list[str]:
    """Those of ``names`` whose value differs from the field's default: set on the command
    line or in a config file, so worth a word when the run's other flags leave them unused."""
    fields = {f.name: f for f in dataclasses.fields(arguments)}
    return [name for name in names if getattr(arguments, name) != default_of(fields[name])]


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def flag_with_value(arguments: Any, name: str) -> str:
    """``--lora-rank 16``, ``--dataset a b``: a field as it would be given on the command line."""
    value = getattr(arguments, name)
    shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
    return f"--{name.replace('_', '-')} {shown.lower() if isinstance(value, bool) else shown}"


def absolute_paths(arguments: Any, is_name: Callable[[str], bool]) -> Any:
    """``arguments`` with each relative path in a ``path`` field that names something here made
    absolute, so that the run's saved arguments mean the same from any folder. A dataset entry
    keeps its ``#N``; one that ``is_name`` (a registered or --dataset-info name, looked up
    before files) or that is no file here (a hub id) stays as given."""
    def absolute(value: str) -> str:
        return value if os.path.isabs(value) or not os.path.exists(value) \
            else os.path.abspath(value)

    def dataset(entry: str) -> str:
        base, hash_sign, count = entry.rpartition("#")
        if not hash_sign:
            base, count = entry, ""
        return entry if is_name(base) else absolute(base) + hash_sign + count

    def pair(item: str) -> str:
        name, equals, value = item.partition("=")
        return item if not equals else f"{name}={absolute(value)}"

    convert = {"path": absolute, "datasets": dataset, "name=path": pair}
    changes = {}
    for f in dataclasses.fields(arguments):
        value = getattr(arguments, f.name)
        if f.metadata["path"] and value:
            to = convert[f.metadata["path"]]
            changes[f.name] = [to(v) for v in value] if isinstance(value, list) else to(value)
    return dataclasses.replace(arguments, **changes)


def saved_arguments(arguments: Any) -> dict[str, Any]:
    """The arguments as saved with a run: every field but the secrets."""
    return {f.name: getattr(arguments, f.name) for f in dataclasses.fields(arguments)
            if not f.metadata["secret"]}
