"""Plain data that plugins register. Nothing here imports torch or transformers.

A callable field accepts either the callable itself or a ``"module:function"`` string, so
that a plugin can point at code that imports heavy libraries without importing it early.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

CallableRef = Callable[..., Any] | str


def resolve_callable(ref: CallableRef) -> Callable[..., Any]:
    """Return the callable behind ``ref``, importing ``"module:function"`` on first use."""
    if callable(ref):
        return ref
    module_name, _, attribute = ref.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model-type``: where the weights live and how to load and train them.

    ``loader(spec, options) -> (model, tokenizer)``; left out, the generic loader
    (``sdk.models.loader:load_from_hub``) fetches ``hub_ids`` through a registered hub.
    ``tokenizer_loader(spec, options) -> tokenizer`` loads the tokenizer alone (for data
    previews); left out, it is read from the same folder the generic loader uses.
    ``config_model_types``: the ``model_type`` values that this model type's checkpoints have
    in their ``config.json`` (transformers' names such as ``"llama"`` and ``"qwen2"``, or a
    remote-code model's own such as ``"chatglm"``). A ``--model-id-or-path`` folder whose
    config names another is refused before anything loads, since the template and LoRA
    targets would not fit it; empty (the default) checks nothing.
    ``converted_to``: the transformers architecture (its config ``model_type``, e.g.
    ``"qwen2"``) that the loader converts this type's official checkpoints to
    (``sdk.models.native``); empty: they load as they are. Model cards and ``sdk models`` say
    it, since adapters trained on a converted model name the native modules.
    ``keeps_official_names``: the conversion keeps the official module names (InternLM v1 is
    Llama under Llama's names), so adapters also load onto the official remote code.
    ``unsupported``: why this model type cannot run with the installed transformers and what
    to use instead; such a type stays listed (users arrive with its name) and is refused with
    that text before anything downloads or loads.
    ``quantized``: the checkpoint's weights are stored quantized (e.g. ``"GPTQ"``): only tuners
    that train adapters on a quantized base can train it, others are refused before it loads.
    """

    model_type: str
    family: str
    template: str
    hub_ids: Mapping[str, str] = field(default_factory=dict)
    revision: str = "main"
    lora_target_modules: tuple[str, ...] = ("all-linear",)
    loader: CallableRef | None = None
    tokenizer_loader: CallableRef | None = None
    requires: tuple[str, ...] = ()
    requires_remote_code: bool = False
    ignore_patterns: tuple[str, ...] = ()
    description: str = ""
    config_model_types: tuple[str, ...] = ()
    converted_to: str = ""
    keeps_official_names: bool = False
    unsupported: str = ""
    quantized: str = ""

    @property
    def name(self) -> str:
        return self.model_type


@dataclass(frozen=True)
class TemplateSpec:
    """A chat format, built from parts (the ms-swift style) or given as a jinja template.

    Parts: literal text in which ``{content}`` stands for the message text and
    ``{bos_token}`` / ``{eos_token}`` for the tokenizer's special tokens. An assistant turn
    renders as ``assistant_prefix + content + assistant_suffix + turn_separator``; the
    content and ``assistant_suffix`` (the end-of-turn marker) carry the loss.

    ``jinja``: a chat template in the Hugging Face format (the model's official one, so that
    rendering equals ``tokenizer.apply_chat_template``). The parts are then unused, except
    ``assistant_suffix``: the end-of-turn marker that follows each reply, trained with it.
    ``special_tokens`` fills ``bos_token`` / ``eos_token`` when no tokenizer is at hand.
    ``add_special_tokens``: encode with the tokenizer's own special tokens, for formats whose
    prefix is ids the tokenizer adds rather than text (ChatGLM2's ``[gMASK]`` ``sop``).
    ``reasoning``: a jinja template that writes a reply's reasoning (``reasoning_content``, or a
    ``<think>...</think>`` opening its content) as a ``<think>`` block before it (Qwen3): the
    trained text of a reply then starts where the generation prompt ends, so the block (empty
    when the data has no reasoning) is trained as the model writes it. ``variables``: extra
    jinja variables, as ``apply_chat_template(..., **variables)`` passes them
    (``enable_thinking``; set by ``--enable-thinking``). ``tool_calls``: how a reply calls
    tools in this template's format, ``tool_calls(text) -> (content, calls)``: ``text`` is the
    reply with its special tokens (up to its end-of-turn marker), ``calls`` OpenAI's function
    calls ``{"name", "arguments"}`` (arguments: JSON text), empty when the reply calls none;
    `sdk deploy` answers requests with ``tools`` only for a template that has it
    (sdk/templates/tool_calls.py has the shared formats).
    """

    name: str
    jinja: str | None = None
    special_tokens: Mapping[str, str] = field(default_factory=dict)
    add_special_tokens: bool = False
    system_format: str = "{content}"
    user_format: str = "{content}"
    assistant_prefix: str = ""
    assistant_suffix: str = ""
    turn_separator: str = ""
    prefix: str = ""
    default_system: str | None = None
    stop_words: tuple[str, ...] = ()
    description: str = ""
    reasoning: bool = False
    variables: Mapping[str, Any] = field(default_factory=dict)
    tool_calls: CallableRef | None = None


@dataclass(frozen=True)
class DataFormat:
    """A record shape: ``detect(record) -> bool`` and ``to_messages(record) -> messages``.

    ``to_messages`` raises ``ValueError`` with a short reason for a record it cannot use;
    the caller adds the file and line. ``options``: a dataclass of ``sdk sft`` options
    (fields made with ``sdk.config.arg``), as for a ``Tuner``; every registered format's
    options are in every run's arguments, and a format that declares them is called as
    ``to_messages(record, args)`` (`sdk template render`: the options at their defaults).
    """

    name: str
    detect: CallableRef
    to_messages: CallableRef
    description: str = ""
    options: type | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """One ``--dataset`` name: its files or hub ids, format, an optional per-record preprocess.

    ``files``: local data files (or folders of them) bundled with the plugin. Without files,
    ``hub_ids`` (hub name -> dataset repository id) say where to download it: the ``--hub``
    copy, else the first hub listed; ``split`` picks the repository's files of that split
    (``train`` matches ``train.json``, ``data/train-0000.parquet``...) and ``subset`` a
    folder in it. ``--dataset-path NAME=PATH`` replaces both with a local copy.
    ``preprocess(record, args) -> record`` runs before format conversion, e.g. to fill
    placeholders from command-line flags; it returns None for a record the dataset leaves
    out on purpose, and ``left_out`` says why (said with how many were left out).
    """

    name: str
    files: tuple[str, ...] = ()
    format: str | None = None
    preprocess: CallableRef | None = None
    left_out: str = ""
    hub_ids: Mapping[str, str] = field(default_factory=dict)
    revision: str = "main"
    split: str = "train"
    subset: str | None = None
    license: str = ""
    description: str = ""


@dataclass(frozen=True)
class Tuner:
    """One ``--sft-type``.

    ``prepare(model, args, model_spec) -> model`` makes the model trainable;
    ``load(checkpoint_dir, load_base_model, dtype) -> model`` rebuilds it from a checkpoint,
    calling ``load_base_model()`` only if the checkpoint does not hold the whole model.
    ``callbacks(model, args) -> list[TrainerCallback]``: called with the prepared model, for
    tuners that act during training (AdaLoRA reallocates ranks after each optimizer step).
    ``check_arguments(args)``: raises ``SdkError`` for settings the tuner cannot train with,
    before any model loads.
    ``default_quantization_bit``: the ``--quantization-bit`` used when the flag is not given
    (qlora: 4). ``requires``: import names (also their pip names) checked before any model
    loads. ``options``: a dataclass of the tuner's own ``sdk sft`` options, its fields made
    with ``sdk.config.arg`` (e.g. ``lora_rank``); they become ``--flag-name`` options and
    fields of the run's arguments when this tuner is chosen (several tuners may share one
    class). Given on the command line with another ``--sft-type`` they are refused; set in a
    ``--config`` file, announced as ignored.
    """

    name: str
    prepare: CallableRef
    load: CallableRef
    description: str = ""
    default_learning_rate: float = 1e-4
    trains_quantized_base: bool = False  # can it train on a 4/8-bit base (--quantization-bit)?
    trains_adapters: bool = False  # peft adapters: --adapter continues one
    callbacks: CallableRef | None = None
    check_arguments: CallableRef | None = None
    default_quantization_bit: int = 0
    requires: tuple[str, ...] = ()
    options: type | None = None


@dataclass(frozen=True)
class Hub:
    """Where models and datasets live.

    ``download(repo_id, revision="main", ignore_patterns=(), *, repo_type="model",
    token=None, endpoint=None) -> Path``: a local folder holding the repository's files.

    ``push(folder, repo_id, *, private=True, token=None, ignore_patterns=(),
    commit_message="", endpoint=None) -> str``: creates the repository if needed (private
    unless ``private=False``), uploads the folder's files (replacing same-named ones; other
    files in the repository stay) and returns the repository's URL.

    Both raise :class:`sdk.errors.HubUnavailable` for failures worth retrying (server errors,
    timeouts) and :class:`sdk.errors.SdkError` for the others; a token never appears in
    their messages. ``endpoint`` None means the hub's usual address (or its library's
    environment variable). ``token_env`` names the environment variable the hub's library
    reads a token from; ``find_token() -> str | None``, if given, returns the token the library
    would send when none is passed (its variable or saved login), so that ``sdk sft
    --push-to-hub`` can refuse to start a run whose upload could not succeed.
    ``check_repo_id(repo_id)``, if given, raises ``ValueError`` saying what an id of this hub
    looks like when ``repo_id`` cannot be one; ``sdk push --repo-id`` and ``sdk sft
    --push-to-hub --hub-model-id`` run it before anything is staged or trained (left out, any
    id goes to ``push``: the ``local`` hub's ids are paths). ``options``: a dataclass of
    ``sdk sft`` options, as for a ``Tuner``; every registered hub's options are flags and in
    every run's arguments, and ``download`` and ``push`` then also get ``options=``, an
    instance of the class holding the run's values (``sdk push``: those saved with the
    checkpoint; commands without them: the defaults).
    """

    name: str
    download: CallableRef
    push: CallableRef
    description: str = ""
    token_env: str = ""
    find_token: CallableRef | None = None
    check_repo_id: CallableRef | None = None
    options: type | None = None
