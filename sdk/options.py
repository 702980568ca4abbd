"""Options that plugins own: a Tuner, Hub or DataFormat declares its `sdk sft` flags as a small
dataclass (``options``, fields made with ``sdk.config.arg``).

The command line and config files take every registered plugin's options; a run's arguments
are one flat object: ``SftArguments`` with the chosen tuner's options and every hub's and
format's (``run_arguments``). Another tuner's option given on the command line is refused
before anything loads; set in a config file (often shared by runs of several tuners), it is
announced and ignored (``sdk.train.ignored_flags``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from sdk.config import SftArguments, default_of, field_types, with_options
from sdk.errors import SdkError
from sdk.registry import KINDS, Registry
from sdk.specs import Hub, Tuner

OPTION_KINDS = ("tuners", "hubs", "formats")


@dataclasses.dataclass(frozen=True)
class Option:
    """One plugin option: its field (the first definition registered), type, the kind of
    thing that declares it and the names of those that do (several tuners may share one)."""

    field: dataclasses.Field
    annotation: Any
    kind: str
    owners: tuple[str, ...]
    plugin: str


def option_names(options: type | None) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(options)) if options else ()


def plugin_options(registry: Registry) -> tuple[dict[str, Option], list[tuple[str, str]]]:
    """Every registered tuner's, hub's and format's options by field name, in registration
    order, and ``(plugin, error)`` for each option a plugin declares unlike the first
    definition (or under a core flag's name): recorded on that plugin, which keeps the first
    definition's flag."""
    core = {f.name for f in dataclasses.fields(SftArguments)}
    options: dict[str, Option] = {}
    errors = []
    for kind in OPTION_KINDS:
        for name, entry in registry.entries[kind].items():
            if entry.spec.options is None:
                continue
            where = f"{KINDS[kind][0]} '{name}'"
            types = field_types(entry.spec.options)
            for f in dataclasses.fields(entry.spec.options):
                flag = "--" + f.name.replace("_", "-")
                if f.name in core:
                    errors.append((entry.plugin, f"{where} declares option {flag}, which is "
                                                 "already an option of sdk sft itself"))
                    continue
                known = options.get(f.name)
                if known is None:
                    options[f.name] = Option(f, types[f.name], kind, (name,), entry.plugin)
                    continue
                options[f.name] = dataclasses.replace(known, owners=(*known.owners, name))
                if definition(f, types[f.name]) != definition(known.field, known.annotation):
                    errors.append((entry.plugin, f"{where} declares option {flag} unlike "
                                                 f"{KINDS[known.kind][0]} '{known.owners[0]}' "
                                                 f"of plugin {known.plugin} (type, default, "
                                                 "help or range); the first one is used"))
    return options, errors


def definition(f: dataclasses.Field, annotation: Any) -> tuple[Any, ...]:
    return annotation, default_of(f), dict(f.metadata)


def arguments_class(registry: Registry, tuner: Tuner | None = None, core: type = SftArguments,
                    kinds: tuple[str, ...] = OPTION_KINDS) -> type:
    """``core`` with the options of the registered plugins of ``kinds``: of the tuners, the
    ``tuner``'s only, or without one every tuner's (what the command line and config files
    take)."""
    specs = [spec for kind in kinds if kind != "tuners" for spec in registry.specs(kind)]
    if "tuners" in kinds:
        specs = [*([tuner] if tuner else registry.specs("tuners")), *specs]
    return with_options(core, *dict.fromkeys(s.options for s in specs if s.options))


def run_arguments(args: Any, tuner: Tuner, registry: Registry) -> Any:
    """``args`` as a run of ``tuner`` reads them: other tuners' options dropped, the tuner's own
    at their defaults where ``args`` lacks them (plain ``SftArguments``)."""
    cls = arguments_class(registry, tuner)
    if type(args) is cls:
        return args
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                  if hasattr(args, f.name)})


def hub_keywords(hub: Hub, values: Any) -> dict[str, Any]:
    """What ``download`` and ``push`` of a hub that declares options get besides their usual
    arguments: ``options``, an instance of its options class filled from ``values`` (a run's
    arguments, or a checkpoint's saved ones as a dict; the defaults where they lack one)."""
    if hub.options is None:
        return {}
    given = values if isinstance(values, dict) else vars(values)
    return {"options": hub.options(**{name: given[name] for name in option_names(hub.options)
                                      if name in given})}


def refuse_other_tuners_options(given: Iterable[str], tuner: Tuner,
                                registry: Registry) -> None:
    """Options of tuners other than ``tuner`` among the flags ``given`` on the command line:
    refused, naming the tuners they belong to."""
    options, _ = plugin_options(registry)
    own = option_names(tuner.options)
    foreign: dict[tuple[str, ...], list[str]] = {}
    for name in given:
        option = options.get(name)
        if option and option.kind == "tuners" and name not in own:
            foreign.setdefault(tuple(sorted(option.owners)), []).append(
                "--" + name.replace("_", "-"))
    if not foreign:
        return
    sentences = [f"{' and '.join(flags)} {'is an option' if len(flags) == 1 else 'are options'} "
                 f"of --sft-type {', '.join(owners)}" for owners, flags in foreign.items()]
    them = "it" if sum(map(len, foreign.values())) == 1 else "them"
    raise SdkError(f"{'; '.join(sentences)}; this run is --sft-type {tuner.name}. Leave {them} "
                   f"out, or choose a tuner that uses {them}.")
