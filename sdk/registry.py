"""Typed lookup over what the plugins registered, with duplicate detection and suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sdk.errors import SdkError, UnknownName

# kind -> (what one item is called in messages, the flag that names it)
KINDS: dict[str, tuple[str, str]] = {
    "models": ("model type", "--model-type"),
    "datasets": ("dataset", "--dataset"),
    "templates": ("template", "--template"),
    "tuners": ("tuner", "--sft-type"),
    "hubs": ("hub", "--hub"),
    "formats": ("data format", "--dataset-format"),
}


@dataclass
class Entry:
    spec: Any
    plugin: str
    override: bool = False
    where: str = ""  # FILE:LINE of the plugin's register call, for messages that blame it


@dataclass
class Registry:
    entries: dict[str, dict[str, Entry]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    # kind -> name -> every plugin that registered the name without override
    conflicts: dict[str, dict[str, list[str]]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )

    # (kind, name, the plugin whose override=True won, the plugin it replaced)
    overrides: list[tuple[str, str, str, str]] = field(default_factory=list)

    def add(self, kind: str, spec: Any, plugin: str, override: bool = False,
            where: str = "") -> None:
        name = spec.name
        known = self.entries[kind]
        existing = known.get(name)
        if existing is None or (override and not existing.override):
            known[name] = Entry(spec, plugin, override, where)
            self.conflicts[kind].pop(name, None)
            if existing is not None:
                self.overrides.append((kind, name, plugin, existing.plugin))
        elif override == existing.override:  # neither, or both, claim to win
            plugins = self.conflicts[kind].setdefault(name, [existing.plugin])
            plugins.append(plugin)
        else:  # the override registered first stays
            self.overrides.append((kind, name, existing.plugin, plugin))

    def override_notices(self) -> list[str]:
        """One line for each registration that another plugin's override=True replaced."""
        return [f"[sdk] plugin {winner} replaces {KINDS[kind][0]} '{name}' of plugin {replaced} "
                "(override=True)." for kind, name, winner, replaced in self.overrides
                if name not in self.conflicts[kind]]

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def entry(self, kind: str, name: str) -> Entry:
        noun, flag = KINDS[kind]
        if name in self.conflicts[kind]:
            owners = " and ".join(self.conflicts[kind][name])
            raise SdkError(
                f"{noun} '{name}' is registered by both {owners}. Uninstall one of them, "
                "or have the one that should win register it with override=True."
            )
        if name not in self.entries[kind]:
            raise UnknownName(unknown_name_message(kind, name, self.names(kind)), kind, name)
        return self.entries[kind][name]

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).spec

    def referenced(self, kind: str, name: str, by: tuple[str, str], field: str) -> Any:
        """The spec ``name`` of ``kind`` that the registered spec ``by`` (kind, name) names in
        its ``field``. If none is registered, the error blames the plugin that registered
        ``by``, not a flag the user never gave."""
        owner = self.entries[by[0]].get(by[1])
        value = getattr(owner.spec, field, None) if owner else None
        names = value if isinstance(value, Mapping) else (value,)  # hub_ids: its keys
        if name not in names or name in self.entries[kind] or name in self.conflicts[kind]:
            return self.get(kind, name)
        shown = dict(value) if isinstance(value, Mapping) else value
        raise UnknownName(f"{KINDS[by[0]][0]} '{by[1]}' of plugin {owner.plugin} has {field}="
                          f"{shown!r} ({owner.where}), but {missing(kind, name, self.names(kind))} "
                          f"Fix the plugin (`sdk plugins check` checks it), or give "
                          f"{KINDS[kind][1]}.", kind, name)

    def specs(self, kind: str) -> list[Any]:
        """Every registered spec of ``kind`` (one per name, whichever wins)."""
        return [entry.spec for entry in self.entries[kind].values()]


def model_template(registry: Registry, spec: Any, chosen: str | None) -> Any:
    """The ``--template`` given (``chosen``), else the one the model type's plugin names."""
    if chosen:
        return registry.get("templates", chosen)
    return registry.referenced("templates", spec.template, ("models", spec.name), "template")


def missing(kind: str, name: str, known: list[str]) -> str:
    """Why no plugin's ``name`` of ``kind`` is at hand, with the closest registered name."""
    from sdk.catalogue import provider

    noun = KINDS[kind][0]
    plugin = provider(kind, name)
    if plugin is not None:
        return (f"{noun} '{name}' is provided by {plugin}, which is not installed: "
                f"pip install {plugin}.")
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"no plugin registers a {noun} '{name}'.{hint}"


def unknown_name_message(kind: str, name: str, known: list[str]) -> str:
    from sdk.catalogue import provider

    noun, flag = KINDS[kind]
    plugin = provider(kind, name)
    if plugin is not None:
        return f"{name} is provided by {plugin}: pip install {plugin}"
    message = f"Unknown {noun} '{name}' ({flag})."
    scored = sorted(((difflib.SequenceMatcher(None, name, k).ratio(), k) for k in known),
                    reverse=True)
    # only names about as close as the closest: one typo should not list a whole family
    close = [k for score, k in scored[:3] if score >= max(0.6, scored[0][0] - 0.05)]
    if close:
        message += " Did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    return message + f" `sdk {kind}` lists the installed ones."
