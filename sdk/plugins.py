"""The plugin manager: built-ins, installed entry points, plugin files, and what each registered.

Sources, in load order: the built-in modules below, every installed distribution with an
entry point in the ``sft_sdk`` group, the files named by ``SFT_SDK_PLUGINS`` (separated by
the OS path separator) and the files given with ``--plugin``. ``SFT_SDK_LOAD_PLUGINS`` (names
separated by commas; set but empty: none) limits which installed ones load, to tell whether a
fault is a plugin's. A plugin that fails to import, or whose hook raises, is recorded with its
error; the others keep working.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from sdk import hookspecs
from sdk.errors import SdkError
from sdk.options import plugin_options
from sdk.registry import KINDS, LOAD_ENV_VAR, Registry
from sdk.specs import DataFormat, DatasetSpec, Hub, ModelSpec, TemplateSpec, Tuner

ENTRY_POINT_GROUP = "sft_sdk"
PLUGINS_ENV_VAR = "SFT_SDK_PLUGINS"
BUILTIN_MODULES = (
    "sdk.templates.builtin",
    "sdk.data.formats",
    "sdk.tuners.builtin",
    "sdk.hubs.local",
    "sdk.hubs.huggingface",
    "sdk.hubs.modelscope",
)
REGISTRATION_HOOKS = {f"register_{kind}": kind for kind in KINDS}


@dataclass
class PluginInfo:
    name: str
    source: str  # "builtin", "entry point" or "file"
    version: str = ""
    registered: dict[str, list[str]] = field(default_factory=dict)
    load_error: str | None = None
    command_error: str | None = None
    # set anew each time the registry is collected: hook exceptions and name conflicts
    registration_errors: list[str] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [e for e in (self.load_error, self.command_error) if e] + self.registration_errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "version": self.version,
            "registered": self.registered,
            "error": "; ".join(self.errors) or None,
        }


class PluginSet:
    """A pluggy manager plus a record of every plugin's origin, registrations and errors."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager("sft_sdk")
        self.manager.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.loaded_files: set[Path] = set()
        self._registry: Registry | None = None

    def register(self, plugin: object, name: str, source: str, version: str = "") -> None:
        self.manager.register(plugin, name=name)
        mistakes = hook_mistakes(plugin)
        self.info[name] = PluginInfo(name=name, source=source, version=version,
                                     load_error="; ".join(mistakes) or None)
        self._registry = None

    def record_failure(self, name: str, source: str, error: BaseException) -> None:
        if self.manager.get_plugin(name) is not None:  # pluggy rejected it half-way
            self.manager.unregister(name=name)
        self.info[name] = PluginInfo(name=name, source=source, load_error=describe(error))

    def load_builtins(self) -> None:
        from sdk import __version__

        for module_name in BUILTIN_MODULES:
            self.register(importlib.import_module(module_name), module_name, "builtin",
                          __version__)

    def load_entry_points(self) -> None:
        entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        wanted = installed_plugins_to_load(entry_points)
        for entry_point in entry_points:
            dist = entry_point.dist
            name = dist.name if dist is not None else entry_point.name
            if wanted is not None and name not in wanted:
                continue
            if name in self.info:
                name = f"{name}:{entry_point.name}"
            try:  # a broken plugin must not take the others down
                self.register(entry_point.load(), name, "entry point",
                              dist.version if dist else "")
            except Exception as error:
                self.record_failure(name, "entry point", error)

    def load_files(self, paths: Iterable[str], named_by: str) -> None:
        """Import each plugin file; ``named_by`` (the flag or variable) is named in errors."""
        for path in paths:
            file = Path(path)
            check_plugin_file(file, named_by)
            if file.resolve() in self.loaded_files:
                continue  # named twice (flag and environment): load it once
            self.loaded_files.add(file.resolve())
            name = str(file)
            try:
                module_spec = importlib.util.spec_from_file_location(
                    f"sft_sdk_file_plugin_{file.stem}", file)
                module = importlib.util.module_from_spec(module_spec)
                module_spec.loader.exec_module(module)
                self.register(module, name, "file")
            except Exception as error:
                self.record_failure(name, "file", error)

    @property
    def registry(self) -> Registry:
        """Everything registered, built on first use by calling each plugin's hooks in turn."""
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        registry = Registry()
        for info in self.info.values():
            info.registered, info.registration_errors = {}, []
        for hook_name, kind in REGISTRATION_HOOKS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                plugin_name = self.manager.get_name(impl.plugin)
                info = self.info[plugin_name]
                register = _registrar(registry, kind, plugin_name, info)
                try:
                    impl.function(*[register for _ in impl.argnames])
                except Exception as error:
                    info.registration_errors.append(f"{hook_name} raised {describe(error)}")
        for kind, names in registry.conflicts.items():
            for name, owners in names.items():
                for owner in owners:
                    others = " and ".join(o for o in owners if o != owner)
                    self.info[owner].registration_errors.append(
                        f"{KINDS[kind][0]} '{name}' is also registered by {others}")
        for plugin, error in plugin_options(registry)[1]:
            self.info[plugin].registration_errors.append(error)
        return registry

    def add_commands(self, cli: Any) -> None:
        for impl in self.manager.hook.register_commands.get_hookimpls():
            try:
                impl.function(*[cli for _ in impl.argnames])
            except Exception as error:
                self.info[self.manager.get_name(impl.plugin)].command_error = (
                    f"register_commands raised {describe(error)}")

    def failures(self) -> list[PluginInfo]:
        return [info for info in self.info.values() if info.errors]


SPEC_TYPES = {"models": ModelSpec, "datasets": DatasetSpec, "templates": TemplateSpec,
              "tuners": Tuner, "hubs": Hub, "formats": DataFormat}


def _registrar(registry: Registry, kind: str, plugin_name: str,
               info: PluginInfo) -> Callable[..., None]:
    def register(spec: Any, override: bool = False) -> None:
        expected = SPEC_TYPES[kind]
        if not isinstance(spec, expected):
            info.registration_errors.append(
                f"register_{kind} got a {type(spec).__name__}; it takes {expected.__name__}")
            return
        registry.add(kind, spec, plugin_name, override)
        info.registered.setdefault(kind, []).append(spec.name)

    return register


HOOK_NAMES = (*REGISTRATION_HOOKS, "register_commands")


def hook_mistakes(plugin: object) -> list[str]:
    """Hooks that pluggy would silently never call: a @hookimpl whose name is no hook (a
    typo), one that takes no argument, a function named like a hook without @hookimpl."""
    mistakes = []
    for attribute in dir(plugin):
        value = getattr(plugin, attribute, None)
        if not inspect.isfunction(value):
            continue
        options = getattr(value, f"{ENTRY_POINT_GROUP}_impl", None)
        hook = (options or {}).get("specname") or attribute
        if options is None:
            if hook in HOOK_NAMES:
                mistakes.append(f"{hook} lacks @hookimpl (from sdk import hookimpl), so it is "
                                "never called")
        elif hook not in HOOK_NAMES:
            close = difflib.get_close_matches(hook, HOOK_NAMES, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            mistakes.append(f"@hookimpl {hook} is not a hook of sft-sdk{hint} (the hooks: "
                            f"{', '.join(HOOK_NAMES)})")
        elif not inspect.signature(value).parameters:
            argument = "cli" if hook == "register_commands" else "register"
            mistakes.append(f"{hook} takes no argument; it is called with {argument}")
    return mistakes


def check_plugin_file(file: Path, named_by: str) -> None:
    """A plugin file is a .py file: Python imports nothing else from a path."""
    where = f"Plugin file '{file}' ({named_by})"
    if file.is_dir():
        raise SdkError(f"{where} is a folder; name the plugin's .py file (several: separated by "
                       f"'{os.pathsep}'). A plugin package is installed with pip instead (entry "
                       f"point group {ENTRY_POINT_GROUP}).")
    if not file.is_file():
        raise SdkError(f"{where} does not exist. Give the path of a .py file.")
    if file.suffix != ".py":
        raise SdkError(f"{where} is not a Python file; name the plugin's .py file.")


def installed_plugins_to_load(
        entry_points: Iterable[importlib.metadata.EntryPoint]) -> set[str] | None:
    """The installed plugins ``SFT_SDK_LOAD_PLUGINS`` names (None when it is not set)."""
    value = os.environ.get(LOAD_ENV_VAR)
    if value is None:
        return None
    wanted = {name.strip() for name in value.split(",") if name.strip()}
    installed = {ep.dist.name if ep.dist is not None else ep.name for ep in entry_points}
    unknown = sorted(wanted - installed)
    if unknown:
        raise SdkError(f"{LOAD_ENV_VAR} names {', '.join(unknown)}, not an installed plugin. "
                       f"Installed: {', '.join(sorted(installed)) or 'none'}; set it empty to "
                       "load none.")
    return wanted


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def load_plugins(plugin_files: Iterable[str] = ()) -> PluginSet:
    """The plugin set a command runs with: built-ins, entry points, env var files, ``files``."""
    plugins = PluginSet()
    plugins.load_builtins()
    plugins.load_entry_points()
    env_files = [p for p in os.environ.get(PLUGINS_ENV_VAR, "").split(os.pathsep) if p]
    plugins.load_files(env_files, PLUGINS_ENV_VAR)
    plugins.load_files(plugin_files, "--plugin")
    return plugins
