"""The plugin manager: built-ins, installed entry points, plugin files, and what each registered.

Sources, in load order: the built-in modules below, every installed distribution with an
entry point in the ``sft_sdk`` group, the files named by ``SFT_SDK_PLUGINS`` (separated by
the OS path separator) and the files given with ``--plugin`` (a .py file or a package folder).
A plugin that fails to import, or whose hook raises, is recorded with its error; the others
keep working, and every command says so (``failure_line``).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import importlib.util
import inspect
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pluggy

from sdk import hookspecs
from sdk.errors import SdkError
from sdk.options import plugin_options
from sdk.registry import KINDS, Registry
from sdk.specs import DataFormat, DatasetSpec, Hub, ModelSpec, TemplateSpec, Tuner

ENTRY_POINT_GROUP = "sft_sdk"
PLUGINS_ENV_VAR = "SFT_SDK_PLUGINS"
NO_THIRD_PARTY_ENV_VAR = "SFT_SDK_NO_THIRD_PARTY_PLUGINS"
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
    # set anew each time the registry is collected: hook exceptions, wrong specs...
    registration_errors: list[str] = field(default_factory=list)
    # ...and names another plugin registers too (which stop a command only if it uses them)
    conflicts: list[str] = field(default_factory=list)
    # where the plugin's own code is (a folder, or a module's file): errors name its file:line
    root: Path | None = None
    leave_out: str = ""  # how to run without it, for its users

    @property
    def load_errors(self) -> list[str]:
        """What went wrong loading the plugin: it works in part, or not at all."""
        return [e for e in (self.load_error, self.command_error) if e] + self.registration_errors

    @property
    def errors(self) -> list[str]:
        return self.load_errors + self.conflicts

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "version": self.version,
            "registered": self.registered,
            "error": "; ".join(self.errors) or None,
        }

    def blamed(self, problem: str) -> str:
        """The problem with the plugin's name first, unless the problem begins with the plugin
        file's own path (a file plugin's name)."""
        if self.source == "file" and problem.startswith(str(Path(self.name).resolve()) + ":"):
            return problem
        return f"{self.name}: {problem}"

    def failure_line(self) -> str:
        """The stderr line every command prints for a plugin with errors: the plugin, what
        went wrong where, and what to do."""
        check = ("sdk plugins check " + ("--plugin " if self.source == "file" else "")
                 + self.name)
        without = f"; to run without it: {self.leave_out}" if self.leave_out else ""
        return (f"error: plugin {self.blamed('; '.join(self.load_errors))} (to fix it: "
                f"`{check}` lists its problems{without})")


class PluginSet:
    """A pluggy manager plus a record of every plugin's origin, registrations and errors."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager("sft_sdk")
        self.manager.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.loaded_files: set[Path] = set()
        self._registry: Registry | None = None

    def register(self, plugin: object, info: PluginInfo) -> None:
        self.manager.register(plugin, name=info.name)
        info.load_error = "; ".join(hook_mistakes(plugin)) or None
        self.info[info.name] = info
        self._registry = None

    def record_failure(self, info: PluginInfo, error: BaseException) -> None:
        if self.manager.get_plugin(info.name) is not None:  # pluggy rejected it half-way
            self.manager.unregister(name=info.name)
        where = raised_at(error, info.root) if info.root else ""
        info.load_error = where + describe(error)
        self.info[info.name] = info

    def load_builtins(self) -> None:
        from sdk import __version__

        for module_name in BUILTIN_MODULES:
            self.register(importlib.import_module(module_name),
                          PluginInfo(module_name, "builtin", __version__))

    def load_entry_points(self, third_party: bool = True) -> None:
        """Installed plugins; without ``third_party`` only the first-party ones
        (registry.toml), to tell whether an outside plugin breaks a command."""
        from sdk.catalogue import first_party_plugins

        first_party = {plugin["name"] for plugin in first_party_plugins()}
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = entry_point.dist
            name = dist.name if dist is not None else entry_point.name
            if not third_party and name not in first_party:
                continue
            leave_out = f"`pip uninstall {name}`" + (
                "" if name in first_party else " or `sdk --no-third-party-plugins`")
            if name in self.info:
                name = f"{name}:{entry_point.name}"
            info = PluginInfo(name, "entry point", dist.version if dist else "",
                              root=module_root(entry_point.module), leave_out=leave_out)
            try:  # a broken plugin must not take the others down
                self.register(entry_point.load(), info)
            except Exception as error:
                self.record_failure(info, error)

    def load_files(self, paths: Iterable[str], named_by: str) -> None:
        """Import each plugin file; ``named_by`` (the flag or variable) is named in errors."""
        for path in paths:
            file = Path(path)
            check_plugin_file(file, named_by)
            if file.resolve() in self.loaded_files:
                continue  # named twice (flag and environment): load it once
            self.loaded_files.add(file.resolve())
            info = PluginInfo(str(file), "file",
                              root=file.resolve() if file.is_dir() else file.resolve().parent,
                              leave_out=f"leave out --plugin {file}" if named_by == "--plugin"
                              else f"take it out of {PLUGINS_ENV_VAR}, or `sdk "
                              "--no-third-party-plugins`")
            try:
                module = import_file(file)
                info.version = str(getattr(module, "__version__", ""))
                self.register(module, info)
            except Exception as error:
                self.record_failure(info, error)

    @property
    def registry(self) -> Registry:
        """Everything registered, built on first use by calling each plugin's hooks in turn."""
        if self._registry is None:
            self._registry = self._collect()
        return self._registry

    def _collect(self) -> Registry:
        registry = Registry()
        for info in self.info.values():
            info.registered, info.registration_errors, info.conflicts = {}, [], []
        for hook_name, kind in REGISTRATION_HOOKS.items():
            for impl in getattr(self.manager.hook, hook_name).get_hookimpls():
                plugin_name = self.manager.get_name(impl.plugin)
                info = self.info[plugin_name]
                folder = Path(inspect.getfile(impl.function)).resolve().parent
                register = _registrar(registry, kind, plugin_name, info, folder)
                try:
                    impl.function(*[register for _ in impl.argnames])
                except Exception as error:
                    info.registration_errors.append(
                        f"{raised_at(error, info.root or folder)}{hook_name} raised "
                        f"{describe(error)}")
        for kind, names in registry.conflicts.items():
            for name, owners in names.items():
                for owner in owners:
                    others = " and ".join(o for o in owners if o != owner)
                    self.info[owner].conflicts.append(
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
        """The plugins that failed to load, in part or in whole."""
        return [info for info in self.info.values() if info.load_errors]


SPEC_TYPES = {"models": ModelSpec, "datasets": DatasetSpec, "templates": TemplateSpec,
              "tuners": Tuner, "hubs": Hub, "formats": DataFormat}


def _registrar(registry: Registry, kind: str, plugin_name: str, info: PluginInfo,
               folder: Path) -> Callable[..., None]:
    def register(spec: Any, override: bool = False) -> None:
        expected = SPEC_TYPES[kind]
        if not isinstance(spec, expected):
            info.registration_errors.append(
                f"register_{kind} got a {type(spec).__name__}; it takes {expected.__name__}")
            return
        if kind == "datasets" and spec.files:
            # bundled files belong to the plugin, wherever the user runs sdk from
            spec = dataclasses.replace(spec, files=tuple(str(folder / Path(file).expanduser())
                                                         for file in spec.files))
        caller = sys._getframe(1)  # the plugin's line that called register
        registry.add(kind, spec, plugin_name, override,
                     f"{caller.f_code.co_filename}:{caller.f_lineno}")
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


def import_file(file: Path) -> Any:
    """The module of a plugin file, or of a package folder (whose relative imports work: it
    is in sys.modules under its own name while it runs)."""
    package = file.is_dir()
    module_name = f"sft_sdk_file_plugin_{file.resolve().name if package else file.stem}"
    module_spec = importlib.util.spec_from_file_location(
        module_name, file / "__init__.py" if package else file,
        submodule_search_locations=[str(file)] if package else None)
    module = importlib.util.module_from_spec(module_spec)
    if package:
        sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def check_plugin_file(file: Path, named_by: str) -> None:
    """A plugin file is a .py file or a package folder: Python imports nothing else."""
    where = f"Plugin file '{file}' ({named_by})"
    if file.is_dir():
        if (file / "__init__.py").is_file():
            return
        raise SdkError(f"{where} is a folder without __init__.py; name the plugin's .py file or "
                       f"package folder (several: separated by '{os.pathsep}'). A plugin "
                       f"distribution is installed with pip instead (entry point group "
                       f"{ENTRY_POINT_GROUP}).")
    if not file.is_file():
        raise SdkError(f"{where} does not exist. Give the path of a .py file.")
    if file.suffix != ".py":
        raise SdkError(f"{where} is not a Python file; name the plugin's .py file.")


UNKNOWN_FIELD = re.compile(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'")


def describe(error: BaseException) -> str:
    """The error in one line; a spec given a field it lacks also names its closest field."""
    match = UNKNOWN_FIELD.search(str(error)) if isinstance(error, TypeError) else None
    spec_class = next((c for c in SPEC_TYPES.values() if match and c.__name__ == match[1]),
                      None)
    if spec_class is None:
        return f"{type(error).__name__}: {error}"
    fields = [f.name for f in dataclasses.fields(spec_class)]
    close = difflib.get_close_matches(match[2], fields, n=1)
    return (f"TypeError: {match[1]} has no field '{match[2]}'; " +
            (f"did you mean '{close[0]}'?" if close else f"its fields: {', '.join(fields)}"))


def raised_at(error: BaseException, root: Path) -> str:
    """``FILE:LINE: `` of the last line of the plugin's own code (``root``: a file, or the
    files under a folder) that the error went through, so that a plugin author sees the call
    to fix; for a syntax error, the line that does not parse."""
    if isinstance(error, SyntaxError) and error.filename and error.lineno:
        places = [(error.filename, error.lineno)]
    else:
        places = [(frame.filename, frame.lineno)
                  for frame in traceback.extract_tb(error.__traceback__)]
    places = [(file, line) for file, line in places if Path(file).resolve().is_relative_to(root)]
    return f"{places[-1][0]}:{places[-1][1]}: " if places else ""


def module_root(module: str) -> Path | None:
    """Where an installed plugin's own code is: its top-level package's folder, or its
    module's file (not site-packages, which holds everyone's code)."""
    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))).resolve()
    return Path(spec.origin).resolve() if spec.has_location else None


def load_plugins(plugin_files: Iterable[str] = (), third_party: bool = True) -> PluginSet:
    """The plugin set a command runs with: built-ins, entry points, env var files, ``files``.
    Without ``third_party``: built-ins, first-party plugins and ``files`` only."""
    plugins = PluginSet()
    plugins.load_builtins()
    plugins.load_entry_points(third_party)
    if third_party:
        env_files = [p for p in os.environ.get(PLUGINS_ENV_VAR, "").split(os.pathsep) if p]
        plugins.load_files(env_files, PLUGINS_ENV_VAR)
    plugins.load_files(plugin_files, "--plugin")
    return plugins
