"""The conformance kit a plugin's own tests import: ready-made checks of templates, datasets and
model types, and pytest fixtures (registered through the ``pytest11`` entry point
``sdk.testing``, so installing sft-sdk gives every pytest run the fixtures).

Light at import, since pytest imports it at start-up of every run: torch, transformers and the
training code are imported inside the checks that need them."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from sdk.config import SftArguments, with_options
from sdk.plugins import load_plugins
from sdk.registry import Registry
from sdk.specs import TemplateSpec
from sdk.templates.engine import IGNORE_INDEX, Template
from sdk.tuners.options import AdaloraOptions, FreezeOptions, LoraOptions, PtuningOptions

Message = dict[str, Any]
# The prompt whose logits the LoRA round trip compares before and after the reload.
PROBE = [{"role": "user", "content": "Who are you?"}]
# SftArguments with every built-in tuner's options, as `sdk sft` reads its flags: run_sft keeps
# the run's tuner's
AnyTunerArguments = with_options(SftArguments, LoraOptions, AdaloraOptions, PtuningOptions,
                                 FreezeOptions)


@pytest.fixture(scope="session")
def sdk_registry() -> Registry:
    """Everything installed plugins register (built-ins, first-party and entry-point plugins,
    and files named in SFT_SDK_PLUGINS)."""
    return load_plugins().registry


def template_spec(registry: Registry, name: str) -> TemplateSpec:
    """The registered template ``name``, failing the test with the names there are if none."""
    names = registry.names("templates")
    assert name in names, f"no template '{name}' is registered; registered: {', '.join(names)}"
    return registry.get("templates", name)


def bound(template: TemplateSpec | Template, tokenizer: Any) -> Template:
    """A spec bound to the tokenizer's bos and eos tokens, as a run binds it; a Template as
    it is."""
    return template if isinstance(template, Template) else Template.for_tokenizer(template,
                                                                                  tokenizer)


def load_tokenizer(tokenizer: Any) -> Any:
    """A tokenizer, loaded when given as its folder."""
    if isinstance(tokenizer, (str, Path)):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(tokenizer)
    return tokenizer


def assert_template_parity(template: TemplateSpec | Template, tokenizer: Any,
                           conversations: Iterable[Sequence[Message]],
                           chat_template: str | None = None) -> None:
    """Assert the template (a spec, e.g. ``template_spec(sdk_registry, NAME)``, or a Template)
    renders each conversation, with and without a generation prompt, to the text of
    ``tokenizer.apply_chat_template``, which is given the spec's variables too
    (``with_thinking(spec, False)``: enable_thinking=False). ``tokenizer`` is a tokenizer or its
    folder; ``chat_template`` replaces the tokenizer's own (an official template kept
    elsewhere)."""
    tokenizer = load_tokenizer(tokenizer)
    ours = bound(template, tokenizer)
    for messages in conversations:
        for generation_prompt in (False, True):
            official = tokenizer.apply_chat_template(
                list(messages), tokenize=False, add_generation_prompt=generation_prompt,
                chat_template=chat_template, **ours.spec.variables)
            text = ours.render(messages, add_generation_prompt=generation_prompt)
            if text != official:  # raised as written: pytest's rewriting re-indents an assert's
                raise AssertionError(  # message by verbosity (this module is a pytest plugin)
                    f"template '{ours.spec.name}' (add_generation_prompt={generation_prompt}) "
                    f"renders\n{text!r}\nbut apply_chat_template gives\n{official!r}\n"
                    f"for {list(messages)}")


def trained_spans(tokenizer: Any, input_ids: Sequence[int], labels: Sequence[int]) -> list[str]:
    """The runs of consecutive tokens that carry loss (label != -100), each decoded alone."""
    spans: list[str] = []
    run: list[int] = []
    for token_id, label in zip(input_ids, labels, strict=True):
        if label != IGNORE_INDEX:
            run.append(token_id)
        elif run:
            spans.append(tokenizer.decode(run))
            run = []
    return spans + ([tokenizer.decode(run)] if run else [])


def assert_trained_spans(template: TemplateSpec | Template, tokenizer: Any,
                         messages: Sequence[Message], expected: Sequence[str],
                         loss_scope: str = "all") -> None:
    """Assert that encoding ``messages`` with the template (a spec or a Template) gives the
    tokenizer's own ids for the rendered text and trains exactly the texts ``expected``: each
    run of trained tokens decoded alone, in order (a reply with its end-of-turn marker)."""
    tokenizer = load_tokenizer(tokenizer)
    ours = bound(template, tokenizer)
    input_ids, labels = ours.encode(tokenizer, messages, loss_scope=loss_scope)
    whole = tokenizer(ours.render(messages),
                      add_special_tokens=ours.spec.add_special_tokens)["input_ids"]
    assert input_ids == list(whole), (
        f"template '{ours.spec.name}' encodes {input_ids}, not the tokenizer's ids of its "
        f"rendered text {list(whole)}")
    spans = trained_spans(tokenizer, input_ids, labels)
    assert spans == list(expected), (
        f"template '{ours.spec.name}' (loss_scope={loss_scope}) trains {spans}, expected "
        f"{list(expected)}")


def assert_dataset_readable(registry: Registry, dataset: str, template: TemplateSpec | Template,
                            dataset_path: Sequence[str] = (), hub: str = "huggingface",
                            max_samples: int | None = 8) -> list[list[Message]]:
    """Assert the registered ``dataset`` reads (from ``dataset_path`` entries ``NAME=FOLDER``
    when given, as ``--dataset-path`` takes them) into conversations that each have a reply and
    render with ``template`` (a spec or a Template); give back the conversations read."""
    from types import SimpleNamespace

    from sdk.data.conversations import load_conversations

    args = SimpleNamespace(dataset_path=list(dataset_path), hub=hub, max_samples=max_samples)
    conversations = load_conversations([dataset], registry, args)
    assert conversations, f"dataset '{dataset}' gave no conversations"
    ours = template if isinstance(template, Template) else Template(template)
    for number, messages in enumerate(conversations):
        assert any(m["role"] == "assistant" for m in messages), (
            f"dataset '{dataset}' conversation {number} has no assistant reply: {messages}")
        assert ours.render(messages), (
            f"dataset '{dataset}' conversation {number} renders empty with "
            f"'{ours.spec.name}'")
    return conversations


class Reloaded(NamedTuple):
    """What train_and_reload gives back to a test's own assertions."""

    result: Any  # run_sft's result: run_dir, checkpoint, the trained model
    saved: dict  # the checkpoint's sft_args.json
    model: Any  # the model reloaded with load_for_inference
    tokenizer: Any
    template: Any
    inputs: Any  # the encoded probe: a single-turn generation prompt


def train_and_reload(registry: Registry, model_type: str, model_dir: Path, dataset: str | Path,
                     output_dir: Path, **overrides: Any) -> Reloaded:
    """The LoRA round trip of a model type: train the tiny model in ``model_dir`` (a random
    model of the type's architecture with its tokenizer) 2 steps on ``dataset`` (a file or a
    registered name, as ``--dataset`` takes it) into ``output_dir``, reload the run
    as `sdk infer` does, and assert the reloaded model's logits equal the trained model's and
    differ from the base model's. ``overrides`` are further `sdk sft` arguments (another tuner:
    ``sft_type`` and its options)."""
    import torch
    from transformers import AutoModelForCausalLM

    from sdk.config import InferArguments
    from sdk.infer.load import load_for_inference
    from sdk.train.sft import run_sft

    settings = dict(model_type=model_type, model_id_or_path=str(model_dir), dataset=[str(dataset)],
                    max_steps=2, batch_size=2, gradient_accumulation_steps=1, save_steps=2,
                    output_dir=str(output_dir), learning_rate=1e-2)
    result = run_sft(AnyTunerArguments(**{**settings, **overrides}), registry)
    saved = json.loads((result.checkpoint / "sft_args.json").read_text())
    model, tokenizer, template = load_for_inference(InferArguments(ckpt_dir=str(result.run_dir)),
                                                    registry)
    inputs = template.tokenize_prompt(tokenizer, PROBE)

    def logits(network: Any) -> Any:
        with torch.no_grad():
            # the input's own positions: prompt/p-tuning put logits of virtual tokens first
            length = inputs["input_ids"].shape[1]
            return network(**inputs.to(network.device)).logits[:, -length:].float()

    reloaded, trained = logits(model), logits(result.model.eval())
    torch.testing.assert_close(reloaded, trained, rtol=1e-5, atol=1e-5, msg=lambda detail: (
        f"'{model_type}' reloaded from {result.run_dir} gives other logits than trained: "
        f"{detail}"))
    base = AutoModelForCausalLM.from_pretrained(model_dir)
    assert not torch.allclose(logits(base), reloaded, atol=1e-4), (
        f"'{model_type}' reloaded from {result.run_dir} gives the base model's logits: the "
        "trained weights were not saved or not loaded")
    return Reloaded(result, saved, model, tokenizer, template, inputs)


def export_merged(registry: Registry, trained: Reloaded, output_dir: Path) -> Any:
    """`sdk export --merge-lora` (run_export) of a :func:`train_and_reload` run into
    ``output_dir``; assert that the merged folder, loaded by transformers alone (no remote
    code, no sdk), gives the reloaded adapter's logits on the probe. The merged model is
    returned for the test's own checks."""
    import torch
    from transformers import AutoModelForCausalLM

    from sdk.config import ExportArguments
    from sdk.export import run_export

    run_export(ExportArguments(ckpt_dir=str(trained.result.run_dir), merge_lora=True,
                               output_dir=str(output_dir)), registry)
    merged = AutoModelForCausalLM.from_pretrained(output_dir)
    with torch.no_grad():
        torch.testing.assert_close(
            merged(**trained.inputs).logits, trained.model(**trained.inputs).logits, rtol=1e-5,
            atol=1e-5, msg=lambda detail: f"the merged export in {output_dir} gives other "
            f"logits than the adapter it merged: {detail}")
    return merged
