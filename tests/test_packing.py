"""Padding-free packing (--packing) and token-budget batches (--max-tokens-per-batch), proven on
the tiny Llama in fp32 on CPU: a packed batch has the padded batch's loss and gradients, each
sample in a pack has its logits alone, and training with either gives the same run."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from conftest import CONVERSATIONS, TINY_MODEL_TYPE
from sdk.config import SftArguments
from sdk.templates.builtin import CHATML
from sdk.templates.engine import IGNORE_INDEX, Template
from sdk.testing import AnyTunerArguments, train_and_reload
from sdk.train.batching import TokenBudgetBatches
from sdk.train.budget import fill_batches
from sdk.train.packed_attention import (
    KERNEL,
    packed_sdpa_mask,
    per_sample_attention,
    register_packed_sdpa,
    sample_bounds,
    varlen_attention,
    varlen_fits,
)
from sdk.train.packing import packing_collator, padding_collator, why_not_packed
from sdk.train.sft import run_sft

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
CHATS = [CONVERSATIONS["multi turn"], CONVERSATIONS["chinese"],
         [{"role": "user", "content": "Who are you?"},
          {"role": "assistant", "content": "I am Tiny, made by the tests."}]]


def tiny_model(model_dir, attention="sdpa"):
    from transformers import AutoModelForCausalLM

    register_packed_sdpa()
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation=attention)
    model.config.use_cache = False  # as the Trainer sets it (TrainingArguments.use_cache)
    return model


def samples(tokenizer):
    from sdk.data.encode import encode_conversations

    examples, _ = encode_conversations(Template(CHATML), tokenizer, CHATS, max_length=0)
    return examples


def starts(examples):
    lengths = [len(example["input_ids"]) for example in examples]
    return [sum(lengths[:i]) for i in range(len(lengths))]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.mark.parametrize("attention", ["sdpa", "eager", KERNEL])
def test_a_pack_has_the_padded_loss_and_each_sample_its_logits_alone(tiny_model_dir, tokenizer,
                                                                     attention):
    model = tiny_model(tiny_model_dir, attention)
    examples = samples(tokenizer)
    packed_batch = packing_collator(model)(examples)
    padded_batch = padding_collator(tokenizer)(examples)
    assert packed_batch["input_ids"].shape == (1, sum(len(e["input_ids"]) for e in examples))
    with torch.no_grad():
        packed = model(**packed_batch)
        padded = model(**padded_batch)

    # the mean over every trained token of the batch, whichever sample it is in
    token_mean = torch.nn.functional.cross_entropy(
        padded.logits[:, :-1].flatten(0, 1), padded_batch["labels"][:, 1:].flatten())
    torch.testing.assert_close(padded.loss, token_mean, **TOLERANCE)
    torch.testing.assert_close(packed.loss, padded.loss, **TOLERANCE)
    for example, start in zip(examples, starts(examples), strict=True):
        length = len(example["input_ids"])
        labels = packed_batch["labels"][0, start:start + length].tolist()
        # no sample is trained to predict the first token of the next
        assert labels == [IGNORE_INDEX] + example["labels"][1:]
        assert packed_batch["position_ids"][0, start:start + length].tolist() == list(range(length))
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([example["input_ids"]])).logits[0]
        torch.testing.assert_close(packed.logits[0, start:start + length], alone, **TOLERANCE)


@pytest.mark.parametrize("attention", ["sdpa", KERNEL])
def test_changing_one_sample_leaves_the_others_in_the_pack_unchanged(tiny_model_dir, tokenizer,
                                                                    attention):
    model = tiny_model(tiny_model_dir, attention)
    examples = samples(tokenizer)
    middle = examples[1]
    changed = [examples[0], {**middle, "input_ids": middle["input_ids"][::-1]}, examples[2]]
    collator = packing_collator(model)
    with torch.no_grad():
        before = model(**collator(examples)).logits[0]
        after = model(**collator(changed)).logits[0]
    first, second, third = starts(examples)
    torch.testing.assert_close(after[:second], before[:second], rtol=0, atol=1e-6)
    torch.testing.assert_close(after[third:], before[third:], rtol=0, atol=1e-6)
    assert not torch.allclose(after[second:third], before[second:third], atol=1e-3)


@pytest.mark.parametrize("attention", ["sdpa", KERNEL])
def test_a_pack_gives_the_padded_lora_gradients(tiny_model_dir, tokenizer, attention):
    from peft import LoraConfig, get_peft_model

    examples = samples(tokenizer)

    def gradients(make_batch):
        torch.manual_seed(0)
        # random lora_B too: with the usual zeros, lora_A gets no gradient to compare
        model = get_peft_model(tiny_model(tiny_model_dir, attention), LoraConfig(
            r=4, target_modules=["q_proj", "v_proj", "down_proj"], lora_dropout=0.0,
            init_lora_weights=False))
        model(**make_batch(model)(examples)).loss.backward()
        return {name: p.grad for name, p in model.named_parameters() if p.requires_grad}

    packed = gradients(packing_collator)
    padded = gradients(lambda model: padding_collator(tokenizer))
    assert packed.keys() == padded.keys() and len(packed) == 12
    for name, gradient in packed.items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(gradient, padded[name], **TOLERANCE, msg=name)


def test_the_per_sample_kernel_builds_no_mask_only_where_it_finds_the_samples(tiny_model_dir):
    from transformers.masking_utils import sdpa_mask

    config = tiny_model(tiny_model_dir).config
    # a packed row: transformers would build the block-diagonal mask (no causal skip)
    row = dict(batch_size=1, q_length=20, kv_length=20, config=config,
               allow_is_causal_skip=False)
    assert sdpa_mask(**row) is not None and packed_sdpa_mask(**row) is None
    padding = torch.ones(2, 20, dtype=torch.bool)
    padding[1, :5] = False
    window = type(config)(**{**config.to_dict(), "sliding_window": 8})
    for case in ({**row, "batch_size": 2, "attention_mask": padding},  # padded
                 {**row, "q_length": 1, "q_offset": 19},  # a decoding step with a cache
                 {**row, "config": window}):  # a window shorter than the row
        expected = sdpa_mask(**case)
        assert expected is not None
        torch.testing.assert_close(packed_sdpa_mask(**case), expected)


def test_the_per_sample_kernel_reads_a_rows_bounds_once_per_forward(tiny_model_dir, tokenizer,
                                                                    monkeypatch):
    # reading the bounds back waits for the device: once per forward, not once per layer
    model = tiny_model(tiny_model_dir, KERNEL)
    model.activation_checkpointing_enable()
    model.train()
    batch = packing_collator(model)(samples(tokenizer))
    reads = []
    nonzero = torch.Tensor.nonzero
    monkeypatch.setattr(torch.Tensor, "nonzero",
                        lambda tensor, *args, **kwargs: reads.append(1) or nonzero(tensor))
    model(**batch).loss.backward()
    assert model.config.num_hidden_layers > 1 and len(reads) == 1
    bounds = [0, *starts(samples(tokenizer))[1:], batch["input_ids"].shape[1]]
    # the same values in another tensor, and a tensor changed in place, are read again
    assert sample_bounds(bounds[-1], batch["position_ids"].clone()) == bounds and len(reads) == 2
    row = torch.arange(10)[None]
    assert sample_bounds(10, row) == [0, 10]
    row[0, 4:] -= 4
    assert sample_bounds(10, row) == [0, 4, 10] and len(reads) == 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch's varlen kernel runs on CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_on_cuda_the_varlen_kernel_gives_the_per_sample_outputs_and_gradients(dtype):
    torch.manual_seed(0)
    bounds = [0, 5, 135, 136, 300]  # a one-token sample too
    attention = torch.nn.Module()
    attention.is_causal, attention.num_key_value_groups = True, 4  # grouped key/value heads
    query = torch.randn(1, 8, 300, 64, device="cuda", dtype=dtype, requires_grad=True)
    key, value = (torch.randn(1, 2, 300, 64, device="cuda", dtype=dtype, requires_grad=True)
                  for _ in range(2))
    assert varlen_fits(attention, query, {"dropout": 0.0, "scaling": 0.125})
    assert not varlen_fits(attention, query, {"dropout": 0.1})
    assert not varlen_fits(attention, query.float(), {})
    weights = torch.randn(1, 300, 8, 64, device="cuda")
    results = []
    for attend in (lambda: varlen_attention(query, key, value, bounds, 0.125),
                   lambda: per_sample_attention(attention, query, key, value, bounds,
                                                scaling=0.125)):
        output = attend()
        (output.float() * weights).sum().backward()
        results.append([output.detach(), *(tensor.grad for tensor in (query, key, value))])
        for tensor in (query, key, value):
            tensor.grad = None
    for varlen, per_sample in zip(*results, strict=True):
        torch.testing.assert_close(varlen, per_sample, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("sft_type", ["prefix", "ptuning", "prompt"])
def test_virtual_token_tuners_are_not_packed(tiny_model_dir, sft_type):
    from sdk.tuners import prompt

    args = AnyTunerArguments(sft_type=sft_type, num_virtual_tokens=4)
    model = getattr(prompt, f"prepare_{sft_type}")(tiny_model(tiny_model_dir), args, None)
    assert "virtual tokens" in why_not_packed(model, args)


def test_neftune_is_not_packed_and_a_plain_model_is(tiny_model_dir):
    model = tiny_model(tiny_model_dir)
    assert why_not_packed(model, SftArguments()) is None
    assert "NEFTune" in why_not_packed(model, SftArguments(neftune_noise_alpha=5.0))


def test_an_attention_that_ignores_the_sample_boundaries_is_found(tiny_model_dir):
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # a kernel registered under a name of its own gets no mask from transformers: it attends
    # causally over the whole row, as remote-code models with their own causal mask do
    AttentionInterface.register("causal_only", sdpa_attention_forward)
    model = tiny_model(tiny_model_dir, "causal_only")
    assert why_not_packed(model, SftArguments()) == (
        "LlamaForCausalLM's attention does not keep packed samples apart")


def train(plugin_set, dataset, output, **overrides):
    settings = dict(model_type=TINY_MODEL_TYPE, dataset=[str(dataset)], output_dir=str(output),
                    max_steps=3, batch_size=2, gradient_accumulation_steps=1,
                    learning_rate=1e-2, save_steps=3, logging_steps=1, seed=0)
    return run_sft(AnyTunerArguments(**{**settings, **overrides}), plugin_set.registry)


def logged(run_dir, key="loss"):
    records = [json.loads(line) for line in (run_dir / "logging.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in records if key in r}


def test_training_packed_is_training_padded(plugin_set, tiny_model_dir, identity_data, tmp_path,
                                            capsys):
    # no dropout: its random masks would follow the shape of the batch
    packed = train_and_reload(plugin_set.registry, TINY_MODEL_TYPE, tiny_model_dir,
                              identity_data, tmp_path / "packed", max_steps=3, logging_steps=1,
                              seed=0, lora_dropout=0.0)
    assert packed.saved["packing"] is True
    # --attn-impl auto moved the packed run to the per-sample kernel; a checkpoint does not
    # name it (a fresh process loads it with transformers' default)
    assert packed.result.model.get_base_model().config._attn_implementation == KERNEL
    assert KERNEL not in (packed.result.checkpoint / "adapter_config.json").read_text()
    padded = train(plugin_set, identity_data, tmp_path / "padded", lora_dropout=0.0,
                   packing=False)
    assert "packing off" not in capsys.readouterr().err
    losses = logged(packed.result.run_dir)
    assert list(losses) == [1, 2, 3]
    assert losses == pytest.approx(logged(padded.run_dir), rel=1e-4)


def test_a_tuner_that_cannot_pack_pads_with_a_notice(plugin_set, identity_data, tmp_path,
                                                     capsys):
    result = train(plugin_set, identity_data, tmp_path, sft_type="prompt", num_virtual_tokens=4,
                   max_steps=1)
    assert ("[sdk] packing off, batches are padded: --sft-type prompt puts its virtual tokens "
            "before each row, not before each sample.") in capsys.readouterr().err
    assert (result.checkpoint / "adapter_model.safetensors").is_file()


def test_token_budget_batches_cover_every_sample_once_within_the_budget():
    lengths = torch.randint(5, 60, (200,), generator=torch.Generator().manual_seed(1)).tolist()
    lengths[7] = 150  # longer than the budget: a batch of its own
    for packed in (True, False):
        sampler = TokenBudgetBatches(lengths, 128, packed=packed, seed=3, shuffle=True)
        batches = list(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(200))
        for batch in batches:
            sizes = [lengths[i] for i in batch]
            cost = sum(sizes) if packed else len(sizes) * max(sizes)
            assert cost <= 128 or batch == [7]
        assert [7] in batches
        # the same seed gives the same batches; another epoch, the same batches reordered
        assert list(TokenBudgetBatches(lengths, 128, packed, seed=3, shuffle=True)) == batches
        sampler.set_epoch(1)
        reordered = list(sampler)
        assert reordered != batches and sorted(reordered) == sorted(batches)
        assert len(sampler) == len(batches)
        assert list(TokenBudgetBatches(lengths, 128, packed, seed=4, shuffle=True)) != batches
    # eval: in order; grouping by length pads less
    assert [i for batch in TokenBudgetBatches(lengths, 128, True, 0, shuffle=False)
            for i in batch] == list(range(200))

    def padding(group_by_length):
        sampler = TokenBudgetBatches(lengths, 128, packed=False, seed=3, shuffle=True,
                                     group_by_length=group_by_length)
        return sum(len(b) * max(lengths[i] for i in b) - sum(lengths[i] for i in b)
                   for b in sampler)

    assert padding(True) < padding(False) / 2


def test_fill_batches_keeps_the_order():
    assert fill_batches([2, 0, 1, 3], [4, 4, 9, 1], 8, packed=True) == [[2], [0, 1], [3]]
    assert fill_batches([3, 0, 1], [4, 4, 9, 1], 8, packed=False) == [[3, 0], [1]]


@pytest.fixture
def uneven_data(tmp_path):
    """12 conversations from 2 to 24 words long."""
    path = tmp_path / "uneven.jsonl"
    path.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": f"Question {n}?"},
        {"role": "assistant", "content": " ".join(["word"] * (2 * n + 2))}]}) + "\n"
        for n in range(12)))
    return path


@pytest.fixture
def seen_batches(monkeypatch):
    """The input_ids shape of every batch that reaches the loss, in order."""
    from sdk.train.trainer import SftTrainer

    shapes = []
    compute_loss = SftTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            shapes.append(tuple(inputs["input_ids"].shape))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(SftTrainer, "compute_loss", recording)
    return shapes


@pytest.mark.parametrize("packing", [True, False])
def test_token_budget_batches_reach_the_model_within_the_budget(plugin_set, uneven_data,
                                                                tmp_path, capsys, seen_batches,
                                                                packing):
    budget = 96
    train(plugin_set, uneven_data, tmp_path, max_steps=-1, num_train_epochs=1,
          gradient_accumulation_steps=2, max_tokens_per_batch=budget, packing=packing,
          save_steps=100)
    tokens = int(re.search(r"12 training rows, (\d+) tokens", capsys.readouterr().err)[1])
    assert len(seen_batches) > 3
    assert all(rows * length <= budget for rows, length in seen_batches)
    if packing:
        assert all(rows == 1 for rows, _ in seen_batches)
        assert sum(length for _, length in seen_batches) == tokens  # every sample once
    else:
        assert max(rows for rows, _ in seen_batches) > 1


def test_group_by_length_uses_the_trainers_length_grouped_sampler(plugin_set, uneven_data,
                                                                  tmp_path, monkeypatch,
                                                                  seen_batches):
    from sdk.train.trainer import SftTrainer

    samplers = []
    train_sampler = SftTrainer._get_train_sampler

    def recording(self, *args, **kwargs):
        samplers.append(train_sampler(self, *args, **kwargs))
        return samplers[-1]

    monkeypatch.setattr(SftTrainer, "_get_train_sampler", recording)
    train(plugin_set, uneven_data, tmp_path, max_steps=2, batch_size=4, group_by_length=True,
          packing=False)
    assert [type(sampler).__name__ for sampler in samplers] == ["LengthGroupedSampler"]
    # transformers puts the longest sample first, to fail early if memory runs out
    assert seen_batches[0][1] == max(length for _, length in seen_batches)


@pytest.mark.slow
def test_a_token_budget_run_resumed_mid_epoch_repeats_the_uninterrupted_run(
        plugin_set, uneven_data, tmp_path, seen_batches):
    from safetensors.torch import load_file

    settings = dict(max_steps=7, save_steps=3, save_total_limit=0, gradient_accumulation_steps=2,
                    max_tokens_per_batch=96, group_by_length=True, lora_dropout=0.3,
                    dtype="fp32")
    whole = train(plugin_set, uneven_data, tmp_path / "out", **settings)
    losses = logged(whole.run_dir)
    epochs = logged(whole.run_dir, "epoch")
    assert 1 < epochs[3] < 2  # checkpoint-3 lies inside the second epoch
    assert seen_batches[4:8] != seen_batches[:4]  # 4 batches an epoch, in a new order each
    later = tmp_path / "later"
    later.mkdir()
    for name in ("checkpoint-6", "checkpoint-7"):
        shutil.move(whole.run_dir / name, later / name)

    resumed = train(plugin_set, uneven_data, tmp_path / "out", **settings,
                    resume_from_checkpoint=str(whole.run_dir / "checkpoint-3"))
    assert resumed.run_dir == whole.run_dir
    assert logged(resumed.run_dir) == losses
    weights = "adapter_model.safetensors"
    expected = load_file(later / "checkpoint-7" / weights)
    for name, tensor in load_file(resumed.checkpoint / weights).items():
        assert torch.equal(tensor, expected[name]), name
