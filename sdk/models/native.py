"""Remote-code checkpoints in transformers' own architectures.

Qwen (v1), ChatGLM2/3, Baichuan2 and InternLM ship their modeling code in their hub
repositories, code written for transformers 4. Their family plugins describe, as a
:class:`Conversion`, how such a folder maps onto a native architecture (Qwen2, Glm, Llama):
the config, each weight, the tokenizer. :func:`native_folder` converts a folder once into a
standard transformers folder in the cache, and that folder loads as any other: no remote code
runs, and packing, SDPA, the liger kernels and the chunked loss work as for a native family.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sdk.errors import SdkError

if TYPE_CHECKING:
    from tokenizers import Tokenizer

# One converted weight: (native parameter name, tensor).
Tensors = list[tuple[str, Any]]
# Converted shards are cut at about this many bytes, as transformers' save_pretrained does.
SHARD_BYTES = 5 * 1024**3


@dataclass(frozen=True)
class Conversion:
    """How a family's official checkpoint folder becomes a native transformers folder.

    ``config(official)`` gives the native config.json from the official one (a dict: the
    official keys as the remote code reads them). ``tensors(name, tensor, official)`` gives the
    native weights one official weight becomes: renamed, split (fused projections), or none
    (buffers the official code recomputes). ``tokenizer(source, destination)`` writes a fast
    tokenizer whose ids equal the official tokenizer's. ``generation(official_config,
    source)`` gives the native generation_config.json (None: none is written).
    ``version`` names the conversion: a change to any of these functions bumps it, so a folder
    converted by an older version is not reused.
    """

    layout: str  # the native model_type the folder holds, e.g. "qwen2"
    version: int
    config: Callable[[dict[str, Any]], dict[str, Any]]
    tensors: Callable[[str, Any, dict[str, Any]], Tensors]
    tokenizer: Callable[[Path, Path], None]
    generation: Callable[[dict[str, Any], Path], dict[str, Any] | None] | None = None
    # a second conversion of the same official folders into the same layout (e.g. a quantized
    # checkpoint's weights dequantized): its own cache entry
    variant: str = ""


# Set while `sdk export/infer --merge-lora` loads the base an adapter is merged into: a loader
# whose quantized weights peft cannot merge into (GPTQ) then loads them dequantized instead.
DEQUANTIZED_BASE: ContextVar[bool] = ContextVar("dequantized_base", default=False)


def native_folder(source: Path, conversion: Conversion, weights: bool = True) -> Path:
    """The native copy of the official checkpoint folder ``source``: made on first use, then
    found in the cache (keyed by the source's files and the conversion's version). Without
    ``weights``, the tokenizer and config alone, in a folder of their own unless the whole
    copy is already made: data is tokenized before any weight is read."""
    from sdk.models.loader import cache_dir

    key = fingerprint(source, conversion)
    variant = f"-{conversion.variant}" if conversion.variant else ""
    target = cache_dir() / "native" / f"{source.name}-{conversion.layout}{variant}-{key}"
    if (target / "config.json").is_file():
        return target
    if not weights:
        target = target.with_name(f"{target.name}-tokenizer")
        if (target / "config.json").is_file():
            return target
    else:
        click.echo(f"[sdk] converting {source} to transformers' {conversion.layout} layout "
                   f"(once; no remote code runs): {target}", err=True)
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        partial.mkdir(parents=True)
    except OSError as error:  # e.g. a read-only home: the converted copy has nowhere to go
        raise SdkError(f"The model cache {target.parent} cannot be written "
                       f"({error.strerror or error}), and {source} is converted into it; set "
                       "SFT_SDK_CACHE to a writable folder.") from None
    try:
        if weights:
            convert(source, partial, conversion)
        else:
            write_config(source, partial, conversion)
            conversion.tokenizer(source, partial)
        try:
            partial.rename(target)  # a crash mid-write never leaves a folder that looks whole
        except OSError:
            if not (target / "config.json").is_file():  # not another process's finished copy
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def fingerprint(source: Path, conversion: Conversion) -> str:
    """What the converted folder depends on: each source file's name, size and time, and the
    conversion's version."""
    digest = hashlib.sha256(f"{source.resolve()}|{conversion.layout}|{conversion.version}".encode())
    if conversion.variant:
        digest.update(f"|{conversion.variant}".encode())
    for file in sorted(source.iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"|{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:12]


def convert(source: Path, destination: Path, conversion: Conversion) -> None:
    """Write the native folder of ``source`` into ``destination``."""
    from safetensors.torch import save_file

    official = write_config(source, destination, conversion)
    shard: dict[str, Any] = {}
    shard_bytes, shards = 0, []

    def flush() -> None:
        nonlocal shard, shard_bytes
        if shard:
            name = f"model-{len(shards) + 1:05d}.safetensors"
            save_file(shard, str(destination / name), metadata={"format": "pt"})
            shards.append((name, list(shard)))
            shard, shard_bytes = {}, 0

    for name, tensor in official_tensors(source):
        for native_name, native_tensor in conversion.tensors(name, tensor, official):
            shard[native_name] = native_tensor.contiguous()
            shard_bytes += native_tensor.numel() * native_tensor.element_size()
        if shard_bytes >= SHARD_BYTES:
            flush()
    flush()
    if not shards:
        raise SdkError(f"{source} holds no weights (no *.safetensors or pytorch_model*.bin).")
    write_index(destination, shards)
    conversion.tokenizer(source, destination)
    if conversion.generation is not None:
        generation = conversion.generation(official, source)
        if generation is not None:
            (destination / "generation_config.json").write_text(
                json.dumps(generation, indent=2) + "\n", encoding="utf-8")


def write_index(destination: Path, shards: list[tuple[str, list[str]]]) -> None:
    """One shard is named model.safetensors; several get transformers' index file."""
    if len(shards) == 1:
        (destination / shards[0][0]).rename(destination / "model.safetensors")
        return
    count = len(shards)
    weight_map = {}
    for number, (name, tensor_names) in enumerate(shards, start=1):
        final = f"model-{number:05d}-of-{count:05d}.safetensors"
        (destination / name).rename(destination / final)
        weight_map.update(dict.fromkeys(tensor_names, final))
    index = {"metadata": {}, "weight_map": weight_map}
    (destination / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n",
                                                              encoding="utf-8")


def write_config(source: Path, destination: Path, conversion: Conversion) -> dict[str, Any]:
    """Write the native config.json; returns the official config it came from."""
    official = read_json(source / "config.json")
    native = conversion.config(official)
    (destination / "config.json").write_text(json.dumps(native, indent=2) + "\n", encoding="utf-8")
    return official


def official_tensors(source: Path) -> Iterator[tuple[str, Any]]:
    """Every weight of the official checkpoint in ``source``, one file at a time:
    safetensors files if there are any, else PyTorch pickles (read as plain tensors)."""
    safetensors = sorted(source.glob("*.safetensors"))
    if safetensors:
        from safetensors import safe_open

        for file in safetensors:
            with safe_open(str(file), framework="pt") as weights:
                for name in weights.keys():  # noqa: SIM118  (safe_open has no __iter__)
                    yield name, weights.get_tensor(name)
        return
    import torch

    for file in sorted(source.glob("pytorch_model*.bin")):
        try:
            weights = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as error:  # noqa: BLE001  (torch raises many kinds for a bad file)
            raise SdkError(f"{file} cannot be read as PyTorch weights ({error}); download it "
                           "again.") from None
        yield from weights.items()


def read_json(file: Path) -> dict[str, Any]:
    try:
        value = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SdkError(f"{file.parent} is not a model folder (no {file.name} in it).") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SdkError(f"{file} is not valid JSON ({error}).") from None
    if not isinstance(value, dict):
        raise SdkError(f"{file} does not hold a JSON object.")
    return value


def require_protobuf(family: str) -> None:
    """Refuse the conversion of ``family``'s SentencePiece tokenizer.model without protobuf,
    naming the package: sentencepiece's (or transformers') generated classes that read the file
    need it, and neither sentencepiece nor transformers installs it. A conversion calls this in
    its config step, so the refusal comes before any weight is read."""
    import importlib.util

    # find_spec("google.protobuf") raises, rather than answering None, without a google package
    if importlib.util.find_spec("google") is None or (
            importlib.util.find_spec("google.protobuf") is None):
        raise SdkError(f"Converting {family}'s tokenizer.model needs protobuf: pip install "
                       "protobuf")


def read_sentencepiece(source: Path, family: str, not_sentencepiece: str = "") -> Any:
    """The SentencePiece model (a protobuf ``ModelProto``) in ``source``/tokenizer.model. An
    SdkError naming ``family`` when the file is missing, protobuf is not installed, or the file
    is not a SentencePiece model (``not_sentencepiece``: what that message adds, e.g. which
    model type has another kind of tokenizer)."""
    require_protobuf(family)
    from google.protobuf.message import DecodeError
    from transformers.convert_slow_tokenizer import import_protobuf

    file = source / "tokenizer.model"
    if not file.is_file():
        raise SdkError(f"{source} has no tokenizer.model ({family}'s SentencePiece tokenizer).")
    proto = import_protobuf().ModelProto()
    try:
        proto.ParseFromString(file.read_bytes())
    except DecodeError:
        raise SdkError(f"{file} is not a SentencePiece model; {family}'s tokenizer is one"
                       f"{f' ({not_sentencepiece})' if not_sentencepiece else ''}.") from None
    return proto


def sentencepiece_tokenizer(proto: Any, renamed: Mapping[int, str] | None = None
                            ) -> tuple[Tokenizer, dict[str, int]]:
    """A ``tokenizers.Tokenizer`` that encodes as the SentencePiece model ``proto`` (from
    :func:`read_sentencepiece`) does, and its vocabulary (piece -> id). transformers'
    SpmConverter follows the model's own settings: normalizer, dummy prefix, byte fallback,
    user-defined pieces kept whole, merges ranked by piece score. Each piece keeps its id
    (its index in the model); ``renamed`` (id -> text, e.g. tokenizer_config.json's
    added_tokens_decoder) gives some pieces the text the official tokenizer shows. A family's
    special tokens and post-processor are its own (:func:`add_special_pieces`)."""
    from transformers.convert_slow_tokenizer import SpmConverter

    renamed = renamed or {}
    vocab = {renamed.get(index, piece.piece): index for index, piece in enumerate(proto.pieces)}
    return SpmConverter.build_tokenizer_from_spm_proto(proto, vocab), vocab


def add_special_pieces(backend: Tokenizer, vocab: Mapping[str, int], tokens: Iterable[str],
                       source: Path, not_pieces: str = "") -> None:
    """Make ``tokens``, pieces of ``backend``'s SentencePiece ``vocab``, special tokens of it:
    matched whole anywhere in a text (not normalized first), left out of a decode that skips
    special tokens. A token that is not a piece would get a new id, past the model's embedding
    rows: an SdkError naming ``source``, with ``not_pieces`` (what that says of the folder)."""
    from tokenizers import AddedToken

    tokens = list(dict.fromkeys(tokens))
    missing = [token for token in tokens if token not in vocab]
    if missing:
        raise SdkError(f"{source}: the special tokens {missing} are not pieces of "
                       f"tokenizer.model{f'; {not_pieces}' if not_pieces else ''}.")
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False)
                                for token in tokens])


def load_native(spec: Any, options: Any, conversion: Conversion) -> tuple[Any, Any]:
    """A model spec's loader for the family of ``conversion``: the native copy of
    ``--model-id-or-path`` (or the hub download), loaded as a standard folder."""
    from sdk.models.loader import load_pretrained, model_folder

    folder = native_folder(model_folder(spec, options), conversion)
    return load_pretrained(folder, replace(options, trust_remote_code=False))


def native_tokenizer(spec: Any, options: Any, conversion: Conversion) -> Any:
    """The fast tokenizer of the native copy; with ``options.weights`` False, converted
    without reading (or downloading) the weights."""
    from transformers import AutoTokenizer

    from sdk.models.loader import model_folder

    return AutoTokenizer.from_pretrained(str(native_folder(model_folder(spec, options),
                                                           conversion, options.weights)))
