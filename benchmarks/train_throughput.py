"""Training throughput and peak memory of `sdk sft` against the seed recipe.

    python benchmarks/train_throughput.py --arch tiny                          # CPU
    python benchmarks/train_throughput.py --arch qwen2.5-7b --mode lora        # GPU
    python benchmarks/train_throughput.py --arch qwen2.5-7b --mode qlora       # GPU, bitsandbytes
    python benchmarks/train_throughput.py --arch qwen2.5-7b --longest          # QLoRA, one row
    python benchmarks/train_throughput.py --arch qwen3-8b --mode lora          # GPU (issue 22)

The baseline is ../shared/bench/hf_baseline.py (transformers Trainer + peft, dynamic padding),
run as it is (for an architecture its table lacks, EXTRA_ARCHS, a copy that lists it). Ours is
`sdk sft`'s training setup with its default settings (the tuner's `prepare`, `build_trainer`:
packing, `--loss-impl auto`, checkpoints), given the batch size,
steps and gradient checkpointing of the baseline. Both train the architecture the baseline defines,
randomly initialised (speed does not depend on the weights), on the rows of its synthetic data
generator with its seed, each in a fresh process. Real tokens are the tokens of the rows trained
on (padding not counted), per second between the end of the warm-up steps and the last step.
Peak memory is the process's peak resident memory on CPU, torch.cuda.max_memory_allocated on
GPU. `--longest` doubles one row's length (QLoRA, gradient checkpointing, batch 1) until a
side runs out of memory, and reports each side at its longest. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BASELINE = REPO.parent / "shared" / "bench" / "hf_baseline.py"
TOKENIZER = REPO.parent / "shared" / "data" / "tokenizers" / "qwen2"
LONGEST_LADDER = [4096 * 2**i for i in range(6)]  # 4k ... 128k tokens
GIB = 2**30
LIGER = {"auto": None, "on": True, "off": False}  # --liger-kernel: --use-liger-kernel
# Architectures hf_baseline.py's ARCH table lacks, in its layout (model_type, hidden, layers,
# heads, kv_heads, intermediate, vocab, tie): Qwen3-8B as Qwen/Qwen3-8B's config.json gives it
# (head_dim 128, Qwen3Config's default), and a tiny Qwen3 for a dry run of its row on a CPU.
EXTRA_ARCHS = {
    "qwen3-8b": ("qwen3", 4096, 36, 32, 8, 12288, 151936, False),
    "qwen3-tiny": ("qwen3", 256, 4, 4, 2, 704, 32000, True),
}
# Ours only (no baseline side): the Llama-3.1-8B shape of Unsloth's longest-context QLoRA
# (342,733 tokens on an 80 GB GPU)
OURS_ONLY_ARCHS = {"llama3.1-8b": ("llama", 4096, 32, 32, 8, 14336, 128256, False)}


def baseline_module() -> Any:
    """hf_baseline.py as a module: its architectures (with EXTRA_ARCHS and OURS_ONLY_ARCHS)
    and its data generator; ARCH_OF_BASELINE, those the baseline side runs."""
    sys.path.insert(0, str(BASELINE.parent))
    import hf_baseline

    if not hasattr(hf_baseline, "ARCH_OF_BASELINE"):
        hf_baseline.ARCH_OF_BASELINE = set(hf_baseline.ARCH) | set(EXTRA_ARCHS)
        hf_baseline.ARCH.update(EXTRA_ARCHS)
        hf_baseline.ARCH.update(OURS_ONLY_ARCHS)
    return hf_baseline


def baseline_script(arch: str) -> Path:
    """hf_baseline.py, or for an architecture of EXTRA_ARCHS a copy of it whose ARCH table
    also lists that one (the seed recipe otherwise run as it is)."""
    if arch not in EXTRA_ARCHS:
        return BASELINE
    source = BASELINE.read_text()
    table = "ARCH = {\n"
    if table not in source:
        raise SystemExit(f"{BASELINE} has no '{table.strip()}' table to add {arch} to")
    row = f"    {arch!r}: {EXTRA_ARCHS[arch]!r},\n"
    copy = Path(tempfile.gettempdir()) / f"hf_baseline_{arch}.py"
    copy.write_text(source.replace(table, table + row, 1))
    return copy


def random_model_folder(arch: str) -> Path:
    """The architecture with random weights (seed 0) and a tokenizer whose padding id is 0, as
    the baseline pads, saved once where `sdk sft`'s loader reads a model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(tempfile.gettempdir()) / f"sdk-bench-{arch}"
    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(baseline_module().make_config(arch), dtype=dtype)
    partial = folder.with_name(folder.name + ".partial")
    model.save_pretrained(partial)
    tokenizer = AutoTokenizer.from_pretrained(TOKENIZER)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(0)
    tokenizer.save_pretrained(partial)
    partial.rename(folder)
    return folder


class CountingCollator:
    """The trainer's collator, counting the rows' tokens (real) and the batch's (padded)."""

    def __init__(self, collate: Any):
        self.collate, self.real, self.padded = collate, 0, 0

    def __call__(self, features: list[dict[str, Any]]) -> Any:
        batch = self.collate(features)
        self.real += sum(len(feature["input_ids"]) for feature in features)
        self.padded += batch["input_ids"].numel()
        return batch


def profiled_step(step: int, path: Path) -> Any:
    """A Trainer callback that runs step ``step`` under torch.profiler and writes its
    operators to ``path``, the most device time first (CPU time without a GPU)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    cuda = torch.cuda.is_available()
    profiler = profile(activities=[ProfilerActivity.CPU,
                                   *([ProfilerActivity.CUDA] if cuda else [])])
    started = []

    class ProfiledStep(TrainerCallback):
        def on_step_begin(self, arguments, state, control, **kwargs):
            if state.global_step + 1 == step:
                started.append(time.perf_counter())
                profiler.start()

        def on_step_end(self, arguments, state, control, **kwargs):
            if state.global_step == step:
                if cuda:
                    torch.cuda.synchronize()
                profiler.stop()
                wall = time.perf_counter() - started[0]
                by = "self_cuda_time_total" if cuda else "self_cpu_time_total"
                path.write_text(f"step {step}: {wall * 1000:.1f} ms wall-clock\n"
                                + profiler.key_averages().table(sort_by=by, row_limit=40))

    return ProfiledStep()


def train_ours(options: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed

    from sdk.data.encode import example
    from sdk.models.loader import LoadOptions, load_pretrained
    from sdk.options import arguments_class
    from sdk.plugins import load_plugins
    from sdk.specs import ModelSpec, resolve_callable
    from sdk.train.fast_path import liger_unavailable, this_device
    from sdk.train.sft import build_trainer

    cuda = torch.cuda.is_available()
    hf = baseline_module()
    registry = load_plugins().registry
    tuner = registry.get("tuners", options.mode)
    run_dir = Path(tempfile.mkdtemp(prefix="sdk-bench-run-"))
    args = arguments_class(registry, tuner)(
        model_type=f"bench-{options.arch}", sft_type=options.mode, dataset=["synthetic"],
        batch_size=options.batch, gradient_accumulation_steps=1, max_steps=options.steps,
        save_steps=options.steps, max_length=options.fixed_len or options.max_len,
        gradient_checkpointing=options.gc or options.offload,
        offload_activations=options.offload, packing=not options.no_packing,
        max_tokens_per_batch=options.max_tokens_per_batch, attn_impl=options.attn_impl,
        **({"lora_dropout": options.lora_dropout} if options.lora_dropout is not None else {}),
        use_liger_kernel=LIGER[options.liger_kernel], deepspeed=options.deepspeed,
        fsdp=options.fsdp,
        quantization_bit=tuner.default_quantization_bit, output_dir=str(run_dir))
    folder = random_model_folder(options.arch)
    model, tokenizer = load_pretrained(folder, LoadOptions(
        dtype=args.dtype, quantization_bit=args.quantization_bit or 0, attn_impl=args.attn_impl))
    if args.use_liger_kernel is None:  # sdk sft's default: where the kernels can run
        architecture = json.loads((folder / "config.json").read_text())["model_type"]
        args.use_liger_kernel = liger_unavailable((architecture,), args.model_type,
                                                  this_device()) is None
    base_params = hf.n_params(model)  # before the tuner: the baseline's count
    set_seed(args.seed)
    spec = ModelSpec(model_type=args.model_type, family="bench", template="chatml")
    model = resolve_callable(tuner.prepare)(model, args, spec)
    rows = hf.Synthetic(options.samples, model.config.vocab_size, options.max_len,
                        fixed=options.fixed_len).items
    examples = Dataset.from_list([example(row["input_ids"], row["labels"]) for row in rows])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(model, tokenizer, examples, None, args,
                            tuner.default_learning_rate, run_dir, {})
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    marks = {}

    class Timer(TrainerCallback):
        # at the same steps as the baseline; the collator runs a batch ahead at both marks
        def on_step_end(self, arguments, state, control, **kwargs):
            if state.global_step in (options.warmup, options.steps):
                if cuda:
                    torch.cuda.synchronize()
                marks[state.global_step] = (time.perf_counter(), counter.real, counter.padded)

    trainer.add_callback(Timer())
    if options.profile:
        trainer.add_callback(profiled_step(options.warmup + 1, Path(options.profile)))
    trainer.train()
    (start, real0, padded0), (end, real1, padded1) = marks[options.warmup], marks[options.steps]
    seconds = end - start
    real = (real1 - real0) / seconds
    # the baseline's useful MFU: 4 (LoRA: forward and input gradients; full: 6) x parameters
    # FLOPs a token, 2 more with recomputation, against an H100's 790 dense bf16 TFLOP/s
    flops = (6 if options.mode == "full" else 4) * base_params + (2 * base_params if options.gc
                                                                   else 0)
    return {"real_tok_s": round(real), "useful_mfu_vs_790tf": round(real * flops / 790e12, 3)
            if cuda else None, "liger_kernel": bool(args.use_liger_kernel),
            "padded_tok_s": round((padded1 - padded0) / seconds),
            "pad_frac": round(1 - (real1 - real0) / (padded1 - padded0), 3),
            "peak_gib": round(torch.cuda.max_memory_allocated() / GIB, 2) if cuda else None,
            "loss": trainer.chosen_loss}


def run_side(command: list[str]) -> dict[str, Any] | None:
    """Run one side in its own process: its JSON line, with its peak memory as ``peak_gib``
    (the process's peak resident memory where it measured none); None if it failed."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0), err.seek(0)
        lines = out.read().decode().splitlines()
        if process.returncode != 0 or not lines:
            tail = err.read().decode().splitlines()[-3:]
            print(f"  failed ({process.returncode}): {' | '.join(tail)}", file=sys.stderr)
            return None
    result = json.loads(lines[-1])
    if result.get("peak_gib") is None:
        result["peak_gib"] = round(usage.ru_maxrss * 1024 / GIB, 2)  # Linux: KiB
    return result


def commands(options: argparse.Namespace, fixed_len: int) -> dict[str, list[str]]:
    shared = ["--arch", options.arch, "--mode", options.mode, "--batch", str(options.batch),
              "--steps", str(options.steps), "--warmup", str(options.warmup),
              "--samples", str(options.samples), "--fixed_len", str(fixed_len)]
    baseline = [sys.executable, str(baseline_script(options.arch)), *shared, "--max_len",
                str(options.max_len)]
    ours = [sys.executable, __file__, "--side", "ours", *shared, "--max-len",
            str(options.max_len), *(["--offload"] if options.offload else []),
            *(["--no-packing"] if options.no_packing else []),
            *(["--max-tokens-per-batch", str(options.max_tokens_per_batch)]
              if options.max_tokens_per_batch else []), "--attn-impl", options.attn_impl,
            *(["--lora-dropout", str(options.lora_dropout)]
              if options.lora_dropout is not None else []),
            *(["--profile", options.profile] if options.profile else []),
            "--liger-kernel", options.liger_kernel,
            *(["--deepspeed", options.deepspeed] if options.deepspeed else []),
            *(["--fsdp", options.fsdp] if options.fsdp else [])]
    if options.gc:
        baseline.append("--gc")
        ours.append("--gc")
    return {"ours": ours, "baseline": baseline}


def compare(options: argparse.Namespace) -> dict[str, Any]:
    """Each side's fastest of ``--repeats`` runs, the sides taking turns (on a shared machine
    the load changes between runs), with the highest peak memory of its runs."""
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "baseline": []}
    for _ in range(options.repeats):
        for side, command in commands(options, options.fixed_len).items():
            print(f"{side}: {' '.join(command[1:])}", file=sys.stderr)
            result = run_side(command)
            print(f"  {json.dumps(result)}", file=sys.stderr)
            if result is not None:
                runs[side].append(result)
    return {side: {**max(results, key=lambda result: result["real_tok_s"]),
                   "peak_gib": max(result["peak_gib"] for result in results)}
            for side, results in runs.items() if results}


def longest(options: argparse.Namespace) -> tuple[dict[str, Any], dict[str, int]]:
    """Each side at the longest length of the ladder (or --lengths) it trains (it stops at the
    first that fails); the baseline only on its own architectures."""
    results, lengths = {}, {}
    sides = ("ours", "baseline") if options.arch in baseline_module().ARCH_OF_BASELINE else (
        "ours",)
    for side in sides:
        for length in options.lengths or LONGEST_LADDER:
            command = commands(options, length)[side]
            print(f"{side}: one row of {length} tokens", file=sys.stderr)
            result = run_side(command)
            if result is None:
                break
            print(f"  {json.dumps(result)}", file=sys.stderr)
            results[side], lengths[side] = result, length
    return results, lengths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="tiny", help="an architecture of hf_baseline.py, "
                        f"or {', '.join(EXTRA_ARCHS)}, or {', '.join(OURS_ONLY_ARCHS)} "
                        "(ours only)")
    parser.add_argument("--mode", default="lora", choices=["lora", "qlora"])
    parser.add_argument("--batch", type=int, help="rows a step (default: 4 on GPU, 8 on CPU)")
    parser.add_argument("--steps", type=int, help="steps (default: 30 on GPU, 12 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed first steps (default 5 / 3)")
    parser.add_argument("--max-len", type=int, default=1024)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1, help="runs of each side, taking "
                        "turns; each side's fastest counts")
    parser.add_argument("--gc", action="store_true", help="gradient checkpointing on both "
                        "sides (default: on for qlora, as the QLoRA recipe)")
    parser.add_argument("--offload", action="store_true",
                        help="ours with --offload-activations")
    parser.add_argument("--no-packing", action="store_true",
                        help="ours with --packing false (batches padded, as the baseline's)")
    parser.add_argument("--max-tokens-per-batch", type=int,
                        help="ours with batches of up to N tokens (--max-tokens-per-batch) "
                        "instead of --batch rows; the baseline keeps --batch")
    parser.add_argument("--attn-impl", default="auto",
                        help="ours with this --attn-impl (sdpa: packed rows keep the "
                        "block-diagonal mask instead of sdpa_varlen)")
    parser.add_argument("--lora-dropout", type=float,
                        help="ours with this --lora-dropout (default: sdk sft's, 0; the "
                        "baseline's is 0.05)")
    parser.add_argument("--liger-kernel", choices=list(LIGER), default="auto", help="ours: "
                        "liger's RMSNorm, SwiGLU and RoPE (CUDA): auto (sdk sft's default: "
                        "where they run), on, off")
    parser.add_argument("--deepspeed", metavar="CONFIG", help="ours with --deepspeed CONFIG "
                        "(one process: ZeRO's overhead)")
    parser.add_argument("--fsdp", metavar="OPTIONS", help="ours with --fsdp OPTIONS (one "
                        "process: FSDP2's overhead)")
    parser.add_argument("--profile", metavar="FILE", help="ours: profile the step after the "
                        "warm-up and write its operators to FILE (that step is timed too, so "
                        "the rate is not comparable)")
    parser.add_argument("--lengths", type=int, nargs="+", help="--longest: these lengths "
                        "instead of 4096 doubled up to 128k")
    parser.add_argument("--longest", action="store_true", help="QLoRA, one row: the longest "
                        "that each side trains")
    parser.add_argument("--fixed_len", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--side", choices=["ours"], help=argparse.SUPPRESS)  # a child process
    options = parser.parse_args()
    if options.side == "ours":
        print(json.dumps(train_ours(options)), flush=True)
        return

    import torch

    cuda = torch.cuda.is_available()
    if options.longest:
        options.mode, options.batch, options.gc = "qlora", 1, True
        options.steps, options.warmup = options.steps or 4, options.warmup or 1
        options.samples = options.steps + 2
    options.gc = options.gc or options.mode == "qlora"
    options.batch = options.batch or (4 if cuda else 8)
    options.steps = options.steps or (30 if cuda else 12)
    options.warmup = options.warmup or (5 if cuda else 3)
    if options.longest:
        results, lengths = longest(options)
    else:
        results, lengths = compare(options), {}
    ours, baseline = results.get("ours"), results.get("baseline")
    summary = {
        "arch": options.arch, "mode": options.mode, "device": "cuda" if cuda else "cpu",
        "batch": options.batch, "gc": options.gc, "offload": options.offload,
        "packing": not options.no_packing,
        "ours_max_tokens_per_batch": options.max_tokens_per_batch,
        "ours_attn_impl": options.attn_impl, "ours_lora_dropout": options.lora_dropout,
        "ours_liger_kernel": ours and ours["liger_kernel"], "ours_deepspeed": options.deepspeed,
        "ours_fsdp": options.fsdp,
        "ours_tok_s": ours and ours["real_tok_s"],
        "baseline_tok_s": baseline and baseline["real_tok_s"],
        "ratio": round(ours["real_tok_s"] / baseline["real_tok_s"], 2)
        if ours and baseline else None,
        "ours_peak_gib": ours and ours["peak_gib"],
        "baseline_peak_gib": baseline and baseline["peak_gib"],
        "ours_pad_frac": ours and ours["pad_frac"],
        "baseline_pad_frac": baseline and baseline["pad_frac"],
        "ours_loss": ours and ours["loss"],
        "ours_mfu": ours and ours["useful_mfu_vs_790tf"],
        "baseline_mfu": baseline and baseline.get("useful_mfu_vs_790tf"),
    }
    if options.longest:
        summary.update(ours_longest=lengths.get("ours"), baseline_longest=lengths.get("baseline"))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
