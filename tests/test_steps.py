"""The step count of `sdk sft --dry-run` (sdk/train/steps.py) is the Trainer's own."""

import json
import random
import types

import pytest

from conftest import TINY_MODEL_TYPE, only_run
from sdk.config import SftArguments
from sdk.train.steps import training_steps

LENGTHS = random.Random(5).choices(range(5, 71), k=41)


def trainers_max_steps(lengths, args, world_size):
    """(steps per epoch, max_steps) as transformers' Trainer plans them from the loader that
    training uses, sharded by accelerate as for the last of ``world_size`` processes."""
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
    from transformers import Trainer, TrainingArguments

    from sdk.train.batching import TokenBudgetBatches

    if args.max_tokens_per_batch:
        batches = TokenBudgetBatches(lengths, args.max_tokens_per_batch, args.packing,
                                     args.seed, shuffle=True,
                                     group_by_length=args.group_by_length)
    else:
        batches = BatchSampler(SequentialSampler(lengths), args.batch_size, drop_last=False)
    if world_size > 1:
        batches = BatchSamplerShard(batches, world_size, world_size - 1, even_batches=True)
    loader = DataLoader(lengths, batch_sampler=batches)
    training_args = TrainingArguments(
        output_dir="unused", use_cpu=True, report_to="none",
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        num_train_epochs=args.num_train_epochs, max_steps=args.max_steps)
    trainer = types.SimpleNamespace(get_total_train_batch_size=lambda _: 1,
                                    get_sp_size=lambda: 1, num_examples=len)
    planned = Trainer.set_initial_training_values(trainer, training_args, loader)
    return planned[1], planned[-1]


@pytest.mark.parametrize("settings, world_size", [
    (dict(batch_size=3, gradient_accumulation_steps=2), 1),
    (dict(batch_size=2, gradient_accumulation_steps=3, num_train_epochs=2.5), 2),
    (dict(batch_size=4, gradient_accumulation_steps=4, max_steps=7), 1),
    (dict(max_tokens_per_batch=100, gradient_accumulation_steps=2, num_train_epochs=0.3), 1),
    (dict(max_tokens_per_batch=100, packing=False, group_by_length=True,
          gradient_accumulation_steps=1, num_train_epochs=3), 1),
    (dict(max_tokens_per_batch=150, gradient_accumulation_steps=2, num_train_epochs=1.5), 2),
    (dict(batch_size=64, gradient_accumulation_steps=16), 2),  # fewer batches than a step
])
def test_steps_are_the_trainers(settings, world_size):
    args = SftArguments(**settings)
    count = training_steps(LENGTHS, args, world_size)
    assert (count.steps_per_epoch, count.total) == trainers_max_steps(LENGTHS, args, world_size)
    assert count.rows == len(LENGTHS)
    assert json.loads(json.dumps(count.as_dict())) == count.as_dict()


def test_a_padded_budget_holds_fewer_rows_than_a_packed_one():
    args = SftArguments(max_tokens_per_batch=100, gradient_accumulation_steps=1)
    packed, padded = training_steps(LENGTHS, args), training_steps(LENGTHS, args, packed=False)
    assert packed.total < padded.total
    assert padded.total == trainers_max_steps(
        LENGTHS, SftArguments(max_tokens_per_batch=100, gradient_accumulation_steps=1,
                              packing=False), 1)[1]


def test_the_steps_of_a_real_run_are_its_checkpoints_max_steps(run_cli, tiny_plugin_file,
                                                                plugin_set, identity_data,
                                                                tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    from sdk.data.arrow import tokenized_dataset, training_and_held_out
    from sdk.data.encode import EncodeSettings
    from sdk.templates.engine import Template
    from sdk.train.batching import row_lengths

    flags = dict(num_train_epochs=1.5, max_tokens_per_batch=40, gradient_accumulation_steps=2)
    result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                     "--dataset", identity_data, "--output-dir", tmp_path / "out",
                     *(part for name, value in flags.items()
                       for part in (f"--{name.replace('_', '-')}", value)))
    assert result.exit_code == 0, result.output
    last = sorted(only_run(tmp_path / "out").glob("checkpoint-*"))[-1]
    planned = json.loads((last / "trainer_state.json").read_text())["max_steps"]

    args = SftArguments(dataset=[str(identity_data)], output_dir=str(tmp_path / "out"), **flags)
    conversations, _ = training_and_held_out(args, plugin_set.registry, None)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = Template.for_tokenizer(plugin_set.registry.get("templates", "chatml"), tokenizer)
    examples, _ = tokenized_dataset(conversations, EncodeSettings(template, tokenizer, 2048), 1)
    count = training_steps(row_lengths(examples), args)
    assert count.total == planned
    assert count.batches_per_epoch > 1  # a budget that splits the rows: not a trivial count
