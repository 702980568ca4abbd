"""The chunked loss (`--loss-impl`) equals transformers' loss, in value and gradients, without
ever computing the logits of an untrained position; activation offload trains the same loss."""

import json

import pytest
import torch

from conftest import TINY_MODEL_TYPE
from sdk.templates.engine import IGNORE_INDEX
from sdk.testing import AnyTunerArguments
from sdk.train.accuracy import count_correct
from sdk.train.loss import choose_loss, eval_loss_and_counts, logits_from_output_layer, token_loss
from sdk.train.sft import run_sft

CHUNK = 3  # tokens a chunk: small, so that every batch here takes several chunks
LENGTHS = (19, 11, 6)  # three sequences; each trains the tokens after its first 40%


def sequences(vocab_size: int) -> list[tuple[list[int], list[int]]]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for length in LENGTHS:
        ids = torch.randint(0, vocab_size, (length,), generator=generator).tolist()
        prompt = int(length * 0.4)
        rows.append((ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return rows


def padded_batch(vocab_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Rows padded on the right, as DataCollatorForSeq2Seq pads them."""
    rows, width = sequences(vocab_size), max(LENGTHS)
    return {
        "input_ids": torch.tensor([ids + [pad_id] * (width - len(ids)) for ids, _ in rows]),
        "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids))
                                        for ids, _ in rows]),
        "labels": torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels))
                                for _, labels in rows]),
    }


def packed_batch(vocab_size: int) -> dict[str, torch.Tensor]:
    """One row, no padding, positions restarting at each sequence."""
    rows = sequences(vocab_size)
    return {
        "input_ids": torch.tensor([[i for ids, _ in rows for i in ids]]),
        "position_ids": torch.tensor([[p for ids, _ in rows for p in range(len(ids))]]),
        "labels": torch.tensor([[label for _, labels in rows for label in labels]]),
    }


def tiny_model(model_dir, tuner: str):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    if tuner == "full":
        return model.train()
    settings = {"lora": {}, "lora on lm_head": {"target_modules": ["q_proj", "v_proj", "lm_head"]},
                "lora, lm_head saved": {"modules_to_save": ["lm_head"],
                                        "ensure_weight_tying": True}}[tuner]
    # random B matrices (not peft's zeros), so that every adapter weight gets a gradient
    config = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                        **{"target_modules": ["q_proj", "v_proj"], **settings})
    return get_peft_model(model, config).train()


def loss_and_gradients(model, batch, num_items_in_batch, impl):
    model.zero_grad()
    if impl == "standard":
        loss = model(**batch, num_items_in_batch=num_items_in_batch).loss
    else:
        loss, outputs = token_loss(model, model.get_output_embeddings(), batch,
                                   num_items_in_batch, impl, CHUNK)
        assert outputs.logits.shape[-2] == 0  # the forward computed no logits
    loss.backward()
    return loss.detach(), {name: parameter.grad.clone()
                           for name, parameter in model.named_parameters()
                           if parameter.requires_grad}


@pytest.mark.parametrize("tuner", ["full", "lora", "lora on lm_head", "lora, lm_head saved"])
@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_chunked_loss_and_gradients_equal_transformers(tiny_model_dir, tuner, layout):
    model = tiny_model(tiny_model_dir, tuner)
    vocab_size = model.config.vocab_size
    batch = (padded_batch(vocab_size, model.config.pad_token_id) if layout == "padded"
             else packed_batch(vocab_size))
    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    # None: this batch's token mean; a number: the tokens of the whole accumulated batch
    for num_items_in_batch in (None, torch.tensor(trained * 3)):
        expected, expected_grads = loss_and_gradients(model, batch, num_items_in_batch,
                                                      "standard")
        loss, grads = loss_and_gradients(model, batch, num_items_in_batch, "chunked")
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
        assert grads.keys() == expected_grads.keys() and len(grads) > 0
        for name, grad in grads.items():
            assert grad.abs().sum() > 0, name
            torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-5,
                                       msg=name)


def test_the_output_layer_sees_only_trained_positions_a_chunk_at_a_time(tiny_model_dir):
    model = tiny_model(tiny_model_dir, "lora on lm_head")
    batch = packed_batch(model.config.vocab_size)
    rows_seen = []
    head = model.get_output_embeddings()
    handle = head.register_forward_hook(
        lambda module, args, output: rows_seen.append(output.shape[-2]))
    loss, _ = token_loss(model, head, batch, None, "chunked", CHUNK)
    forward_rows = list(rows_seen)
    loss.backward()
    handle.remove()

    trained = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    assert trained < batch["input_ids"].numel() - len(LENGTHS)  # prompts are left out
    assert forward_rows[0] == 0  # the model's own call: no position
    assert sum(forward_rows) == trained and max(forward_rows) <= CHUNK
    assert rows_seen == forward_rows  # the backward computes no chunk again


@pytest.mark.parametrize("layout", ["padded", "packed"])
def test_chunked_eval_gives_the_models_loss_and_the_counts_of_its_logits(tiny_model_dir, layout):
    model = tiny_model(tiny_model_dir, "lora").eval()
    vocab_size = model.config.vocab_size
    batch = (padded_batch(vocab_size, model.config.pad_token_id) if layout == "padded"
             else packed_batch(vocab_size))
    with torch.no_grad():
        predicted = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1)
    # every other trained token made the one the model predicts: some right, some wrong
    labels = batch["labels"]
    agree = (labels[:, 1:] != IGNORE_INDEX) & (torch.arange(labels.shape[1] - 1) % 2 == 0)
    labels[:, 1:][agree] = predicted[:, :-1][agree]
    head = model.get_output_embeddings()
    logits_rows = []
    handle = head.register_forward_hook(
        lambda module, args, output: logits_rows.append(output.shape[-2]))
    with torch.no_grad():
        loss, counts = eval_loss_and_counts(model, head, batch, CHUNK)
        handle.remove()
        expected = model(**batch)
    torch.testing.assert_close(loss, expected.loss, rtol=1e-5, atol=1e-5)
    assert counts.tolist() == count_correct(expected.logits, batch["labels"]).tolist()
    assert counts[:, 1].sum() > counts[:, 0].sum() > 0  # some right, some wrong
    assert max(logits_rows) <= CHUNK  # never the logits of the whole batch


def test_offloading_hooks_never_see_the_logits(tiny_model_dir):
    """--offload-activations packs what the backward keeps; a chunk's logits are not kept."""
    model = tiny_model(tiny_model_dir, "lora on lm_head")
    weights = {parameter.untyped_storage().data_ptr() for parameter in model.parameters()}
    packed_shapes = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in weights:  # an activation
            packed_shapes.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss, _ = token_loss(model, model.get_output_embeddings(),
                             packed_batch(model.config.vocab_size), None, "chunked", CHUNK)
    loss.backward()
    assert packed_shapes  # the model's own activations
    assert not [shape for shape in packed_shapes if shape[-1] == model.config.vocab_size]


def test_a_batch_without_trained_tokens_gives_transformers_value(tiny_model_dir):
    model = tiny_model(tiny_model_dir, "full")
    batch = padded_batch(model.config.vocab_size, model.config.pad_token_id)
    batch["labels"][:] = IGNORE_INDEX
    loss, grads = loss_and_gradients(model, batch, torch.tensor(7), "chunked")
    assert loss == 0 and all(grad.abs().sum() == 0 for grad in grads.values())
    loss, _ = loss_and_gradients(model, batch, None, "chunked")
    assert loss.isnan()  # as transformers' mean over no token


def test_the_loss_implementation_is_chosen_by_device_model_and_liger(tiny_model_dir):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import LlamaForCausalLM

    plain, lora_head = tiny_model(tiny_model_dir, "full"), tiny_model(tiny_model_dir,
                                                                       "lora on lm_head")
    choose = choose_loss
    assert choose("auto", plain, on_cuda=False, sharded=False)[0] == "chunked"
    assert choose("chunked", plain, on_cuda=True, sharded=False, liger_installed=True)[0] == (
        "chunked")
    assert choose("auto", plain, on_cuda=True, sharded=False, liger_installed=True)[0] == (
        "liger")
    impl, why = choose("auto", plain, on_cuda=True, sharded=False, liger_installed=False)
    assert impl == "chunked" and "pip install liger-kernel" in why
    impl, why = choose("auto", lora_head, on_cuda=True, sharded=False, liger_installed=True)
    assert impl == "chunked" and "wrapped" in why
    assert choose("standard", plain, on_cuda=False, sharded=False)[0] == "standard"
    impl, why = choose("auto", plain, on_cuda=True, sharded=True, liger_installed=True)
    assert impl == "standard" and "FSDP" in why

    prompt = get_peft_model(tiny_model(tiny_model_dir, "full"),
                            PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    impl, why = choose("chunked", prompt, on_cuda=False, sharded=False)
    assert impl == "standard" and "virtual tokens" in why

    class OwnCode(LlamaForCausalLM):  # as a model repository's code would define it
        pass

    impl, why = choose("auto", OwnCode(plain.config), on_cuda=False, sharded=False)
    assert impl == "standard" and "remote code" in why


def test_logits_changed_after_the_output_layer_are_detected(tiny_model_dir):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    input_ids = torch.arange(40).reshape(2, 20)
    assert logits_from_output_layer(tiny_model(tiny_model_dir, "lora"), input_ids)
    gemma = Gemma2ForCausalLM(Gemma2Config(  # soft-caps its logits: tanh(x / cap) * cap
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8,
        final_logit_softcapping=0.5)).train()
    assert not logits_from_output_layer(gemma, input_ids)
    assert gemma.training  # the check leaves the training mode as it found it


def write_rows(path, count=12):
    """Replies of varied length, so that batches are padded."""
    with path.open("w", encoding="utf-8") as handle:
        for number in range(count):
            reply = " ".join(["tiny"] * (1 + 3 * number))
            handle.write(json.dumps({"messages": [
                {"role": "user", "content": f"Question {number}?"},
                {"role": "assistant", "content": reply}]}) + "\n")
    return path


def train_log(plugin_set, data, output, **overrides):
    settings = dict(model_type=TINY_MODEL_TYPE, dataset=[str(data)], output_dir=str(output),
                    max_steps=3, batch_size=2, gradient_accumulation_steps=2,
                    learning_rate=1e-2, save_steps=3, logging_steps=1, seed=0,
                    split_dataset_ratio=0.25, eval_steps=3)
    result = run_sft(AnyTunerArguments(**{**settings, **overrides}), plugin_set.registry)
    records = [json.loads(line)
               for line in (result.run_dir / "logging.jsonl").read_text().splitlines()]
    return ([r["loss"] for r in records if "loss" in r],
            [r["eval_loss"] for r in records if "eval_loss" in r])


@pytest.mark.slow
def test_training_with_the_chunked_loss_logs_transformers_losses(plugin_set, tmp_path, capsys):
    data = write_rows(tmp_path / "rows.jsonl")
    standard = train_log(plugin_set, data, tmp_path / "a", loss_impl="standard")
    capsys.readouterr()
    chunked = train_log(plugin_set, data, tmp_path / "b")  # auto: chunked on CPU
    assert "[sdk] loss: chunked" in capsys.readouterr().err
    assert len(standard[0]) == 3 and len(standard[1]) == 1
    assert chunked[0] == pytest.approx(standard[0], rel=1e-5)  # training, 2 accumulated steps
    assert chunked[1] == pytest.approx(standard[1], rel=1e-5)  # eval


@pytest.mark.slow
def test_offloaded_activations_train_the_same_loss(plugin_set, tmp_path, capsys):
    data = write_rows(tmp_path / "rows.jsonl")
    kept = train_log(plugin_set, data, tmp_path / "a", gradient_checkpointing=True)
    offloaded = train_log(plugin_set, data, tmp_path / "b", offload_activations=True)
    assert offloaded[0] == pytest.approx(kept[0], rel=1e-5)
    assert offloaded[1] == pytest.approx(kept[1], rel=1e-5)
    saved = json.loads(next((tmp_path / "b").rglob("sft_args.json")).read_text())
    assert saved["gradient_checkpointing"] is True  # offloading implies it
