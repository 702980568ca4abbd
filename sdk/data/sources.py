"""Where a ``--dataset`` comes from: a dataset_info.json entry, a registered dataset (bundled
files or a hub repository), a local file or folder, or a hub dataset id — resolved to local
data files, downloading them if needed."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from sdk.config import key_value_pairs
from sdk.data.dataset_info import dataset_from_info, did_you_mean, info_file, read_dataset_info
from sdk.data.readers import READERS, cannot_read, is_saved_dataset
from sdk.errors import SdkError, UnknownName
from sdk.hubs import default_hub
from sdk.hubs.repo_id import is_repo_id
from sdk.options import hub_keywords
from sdk.registry import Registry
from sdk.specs import DatasetSpec, resolve_callable

SPLITS = {"train", "test", "validation", "valid", "dev", "eval"}


def dataset_source(name: str, registry: Registry, args: Any = None) -> DatasetSpec:
    """The dataset ``name`` with its files on this machine.

    Looked up in order: ``--dataset-info`` (its entries win over the registry), the
    registry, a local path, a hub dataset id (``owner/name`` on ``--hub``).
    ``--dataset-path NAME=PATH`` points a named dataset at a local copy.
    """
    dataset_info = getattr(args, "dataset_info", None)
    info_names: dict = {}
    if dataset_info:
        info_names = read_dataset_info(dataset_info)
    local_copies = local_paths(getattr(args, "dataset_path", None) or [])
    if name in info_names:
        spec = dataset_from_info(name, dataset_info)
    elif name in registry.entries["datasets"] or name in registry.conflicts["datasets"]:
        spec = registry.get("datasets", name)
    elif on_disk(Path(name)) or Path(name).suffix.lower() in READERS:
        return DatasetSpec(name=name, files=local_files(Path(name), "train", None, name))
    elif is_repo_id(name):
        spec = DatasetSpec(name=name, hub_ids={hub_name(args): name})
    else:
        try:
            registry.get("datasets", name)  # raises: unknown name, with suggestions
        except UnknownName as error:
            if not dataset_info:
                raise
            raise UnknownName(f"{error} Nor is it defined in --dataset-info "
                              f"{info_file(dataset_info)}.{did_you_mean(name, info_names)}",
                              error.kind, name) from None
    if name in local_copies:
        files = local_files(local_copies[name], spec.split, spec.subset,
                            f"--dataset-path {name}={local_copies[name]}")
    elif spec.files or not spec.hub_ids:
        check_bundled_files(spec, registry)
        return spec
    else:
        files = download(spec, registry, args)
    return dataclasses.replace(spec, files=files, hub_ids={})


def check_bundled_files(spec: DatasetSpec, registry: Registry) -> None:
    """A registered dataset's files are the plugin's: a missing one is the plugin's fault."""
    entry = registry.entries["datasets"].get(spec.name)
    if entry is None or entry.spec is not spec:  # from --dataset-info, or a path
        return
    for file in spec.files:
        if not on_disk(Path(file)):
            raise SdkError(f"Dataset '{spec.name}' of plugin {entry.plugin} ({entry.where}) "
                           f"lists '{file}' in its files, which does not exist. Fix the plugin (a "
                           "relative path is read from the plugin's folder; a package ships "
                           "its data files as package-data), or reinstall it.")


def is_dataset_name(name: str, registry: Registry, args: Any = None) -> bool:
    """Whether dataset_source takes ``name`` for a --dataset-info or registered name, which
    it looks up before local paths."""
    dataset_info = getattr(args, "dataset_info", None)
    return (name in registry.entries["datasets"] or name in registry.conflicts["datasets"]
            or bool(dataset_info) and name in read_dataset_info(dataset_info))


def hub_name(args: Any) -> str:
    return getattr(args, "hub", None) or default_hub()


def local_paths(pairs: list[str]) -> dict[str, Path]:
    """``--dataset-path NAME=PATH`` pairs, checked."""
    paths = key_value_pairs("--dataset-path", pairs,
                            "NAME=PATH, e.g. alpaca-zh=/data/alpaca_gpt4_data_zh.json")
    for name, path in paths.items():
        if not Path(path).exists():
            raise SdkError(f"--dataset-path {name}={path}: '{path}' does not exist.")
    return {name: Path(path) for name, path in paths.items()}


def download(spec: DatasetSpec, registry: Registry, args: Any) -> tuple[str, ...]:
    """The data files of the dataset's repository on ``--hub`` (else the first hub it has)."""
    preferred = hub_name(args)
    chosen = preferred if preferred in spec.hub_ids else next(iter(spec.hub_ids))
    hub = registry.referenced("hubs", chosen, ("datasets", spec.name), "hub_ids")
    repo_id = spec.hub_ids[chosen]
    where = f"Dataset '{spec.name}' ({chosen} dataset {repo_id})"
    try:
        folder = resolve_callable(hub.download)(
            repo_id, spec.revision, repo_type="dataset",
            token=getattr(args, "hub_token", None), **hub_keywords(hub, args))
    except SdkError as error:
        hint = ("" if spec.name != repo_id else
                f" '{spec.name}' is not a local file or folder either.")
        raise SdkError(f"{where} could not be downloaded: {error}{hint} To use a local "
                       f"copy, pass --dataset-path {spec.name}=PATH.") from None
    return local_files(Path(folder), spec.split, spec.subset, where)


def on_disk(path: Path) -> bool:
    """Whether ``path`` exists; one in a folder we may not look into counts (reading it then
    says why it cannot be read)."""
    try:
        return path.exists()
    except OSError:
        return True


def _split_tokens(path: Path) -> set[str]:
    return set(re.split(r"[/_.\-]", str(path).lower())) & SPLITS


def local_files(path: Path, split: str, subset: str | None, where: str) -> tuple[str, ...]:
    """A data file as it is; of a folder, the data files of ``split`` (files named after no
    split count as every split's) under the ``subset`` folder, hidden folders left out."""
    try:
        return _local_files(path, split, subset, where)
    except OSError as error:  # a folder on the way that we may not look into
        raise cannot_read(Path(error.filename or path), error) from None


def _local_files(path: Path, split: str, subset: str | None, where: str) -> tuple[str, ...]:
    if path.is_file() or is_saved_dataset(path) or not path.is_dir():
        return (str(path),)  # a missing file is reported when it is read, with its name
    found = sorted(p for p in path.rglob("*")
                   if p.is_file() and p.suffix.lower() in READERS
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if subset:
        found = [p for p in found if subset in p.relative_to(path).parts[:-1]]
    if not found:
        raise SdkError(f"{where}: folder '{path}' holds no data files; give a "
                       f"{'/'.join(sorted(READERS))} file, a folder of them, or a folder "
                       "written by datasets' save_to_disk.")
    of_split = [p for p in found if split in _split_tokens(p.relative_to(path))]
    chosen = of_split or [p for p in found if not _split_tokens(p.relative_to(path))]
    if not chosen:
        listed = ", ".join(str(p.relative_to(path)) for p in found[:10])
        raise SdkError(f"{where}: no {'/'.join(sorted(READERS))} files of split '{split}'"
                       f"{f' in subset {subset}' if subset else ''} in {path} (data files "
                       f"there: {listed}).")
    return tuple(str(p) for p in chosen)
