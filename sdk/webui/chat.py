"""The Chat tab's models: a checkpoint, an export or a model type loaded as `sdk infer` loads
it, kept while the page chats with it, and replies streamed from it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sdk.config import InferArguments
from sdk.errors import SdkError
from sdk.infer.chat import StreamedReply, prompt_and_options
from sdk.infer.load import checkpoint_or_export, load_for_inference, with_system
from sdk.infer.stops import finish_reply
from sdk.registry import Registry
from sdk.runs.run_dir import ARGS_FILE, read_saved_arguments

Messages = list[dict[str, str]]
KEPT_MODELS = 2  # a fine-tuned model and its base, for compare mode


def infer_arguments(source: str, registry: Registry) -> InferArguments:
    """`sdk infer`'s arguments for ``source``: a model type's name, else a checkpoint, run or
    export folder (--ckpt-dir)."""
    source = source.strip()
    if not source:
        raise SdkError("Pick a checkpoint, an export folder or a model type to chat with.")
    if source in registry.names("models"):
        return InferArguments(model_type=source)
    if not Path(source).is_dir():
        raise SdkError(f"'{source}' is neither a model type (see `sdk models`) nor a folder.")
    return InferArguments(ckpt_dir=source)


def base_source(source: str, registry: Registry) -> str:
    """The model type ``source`` (a checkpoint, run or export) was trained from."""
    args = infer_arguments(source, registry)
    if args.model_type:
        return args.model_type
    checkpoint = checkpoint_or_export(source)
    return read_saved_arguments(checkpoint / ARGS_FILE)["model_type"]


class ChatModels:
    """Loaded models by source, the last KEPT_MODELS used; one generation at a time (the
    page's users share the machine, as `sdk deploy`'s clients do)."""

    def __init__(self, registry: Registry):
        self.registry = registry
        self._loaded: dict[str, tuple[Any, Any, Any]] = {}
        self._lock = threading.Lock()

    def _model(self, source: str) -> tuple[Any, Any, Any]:
        if source not in self._loaded:
            loaded = load_for_inference(infer_arguments(source, self.registry), self.registry)
            while len(self._loaded) >= KEPT_MODELS:
                self._loaded.pop(next(iter(self._loaded)))
            self._loaded[source] = loaded
        return self._loaded[source]

    def reply(self, source: str, messages: Messages, system: str,
              settings: dict[str, Any]) -> Iterator[str]:
        """The reply to ``messages`` so far, growing as it is generated."""
        with self._lock:
            model, tokenizer, template = self._model(source.strip())
            if system.strip():
                template = with_system(template, system.strip())
            args = InferArguments(**settings)
            inputs, options, stop_strings = prompt_and_options(model, tokenizer, template,
                                                               messages, args)
            text = ""
            for piece in StreamedReply(model, tokenizer, inputs, options):
                text += piece
                yield finish_reply(text, stop_strings)
