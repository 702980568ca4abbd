"""`sdk plugins check`: everything a plugin registered, validated now rather than when a run
first uses it. Light: nothing here imports torch or transformers, or the plugin's callables."""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from sdk.errors import SdkError
from sdk.plugins import PluginSet
from sdk.registry import KINDS, Registry
from sdk.specs import CallableRef

# Rendered by every template: a first turn alone, and two turns. The same with a system
# prompt may be refused (Gemma's and Mistral v0.1's official templates raise an error).
TURNS = ({"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "And 3+3?"}, {"role": "assistant", "content": "6"})
CONVERSATIONS = (TURNS[:2], TURNS)
WITH_SYSTEM = ({"role": "system", "content": "You are terse."}, *TURNS)
# a config.json model_type as transformers and remote code name them: "qwen2", "gpt_neox"
CONFIG_MODEL_TYPE = re.compile(r"[a-z][a-z0-9_-]*")
CALLABLE_FIELDS = {
    "models": ("loader", "tokenizer_loader"), "datasets": ("preprocess",),
    "formats": ("detect", "to_messages"), "tuners": ("prepare", "load", "callbacks",
                                                     "check_arguments"),
    "hubs": ("download", "push", "find_token", "check_repo_id"), "templates": ("tool_calls",),
}


def check_plugins(plugins: PluginSet, names: list[str]) -> list[str]:
    """One line per problem of the plugins ``names``, each naming the plugin."""
    registry = plugins.registry
    problems = []
    for name in names:
        info = plugins.info[name]
        problems += [info.blamed(error) for error in info.errors]
        for kind, registered in info.registered.items():
            for item in registered:
                entry = registry.entries[kind].get(item)
                if entry is None or entry.plugin != name:
                    continue  # another plugin's override=True replaced it, or a conflict
                problems += [info.blamed(f"{entry.where}: {KINDS[kind][0]} '{item}': {problem}")
                             for problem in spec_problems(kind, entry.spec, registry)]
    return problems


def spec_problems(kind: str, spec: Any, registry: Registry) -> Iterator[str]:
    for field in CALLABLE_FIELDS[kind]:
        yield from callable_problems(field, getattr(spec, field))
    yield from CHECKS.get(kind, lambda spec, registry: iter(()))(spec, registry)


def model_problems(spec: Any, registry: Registry) -> Iterator[str]:
    yield from reference("template", spec.template, "templates", registry)
    yield from hub_problems(spec.hub_ids, registry)
    for field in ("lora_target_modules", "config_model_types", "requires", "ignore_patterns"):
        yield from names_problems(field, getattr(spec, field))
    if not spec.lora_target_modules:
        yield "lora_target_modules is empty; give module names, or leave it out (all-linear)"
    for name in spec.lora_target_modules:
        if isinstance(name, str) and re.search(r"[\s,]", name):
            yield (f"lora_target_modules has {name!r}; a module name has no spaces or commas "
                   "(one name per tuple item)")
    for name in spec.config_model_types:
        if isinstance(name, str) and not CONFIG_MODEL_TYPE.fullmatch(name):
            yield (f"config_model_types has '{name}', which no config.json has as its model_type "
                   "(lower case, e.g. 'qwen2' or 'gpt_neox')")
    if not (spec.hub_ids or spec.loader or spec.unsupported):
        yield "has neither hub_ids nor a loader: nothing says where its weights are"


def dataset_problems(spec: Any, registry: Registry) -> Iterator[str]:
    if spec.format is not None:
        yield from reference("format", spec.format, "formats", registry)
    yield from hub_problems(spec.hub_ids, registry)
    yield from names_problems("files", spec.files)
    for file in spec.files:
        if isinstance(file, str) and not Path(file).exists():
            yield (f"files has '{file}', which does not exist (a relative path is read from "
                   "the plugin's folder; a package ships it as package-data)")
    if not (spec.files or spec.hub_ids):
        yield "has neither files nor hub_ids: nothing says where its data is"


def template_problems(spec: Any, registry: Registry) -> Iterator[str]:
    from sdk.templates.engine import Template

    yield from names_problems("stop_words", spec.stop_words)
    try:
        template = Template(spec)
    except SdkError as error:
        yield str(error).split(". Fix it in")[0]
        return
    for conversation in (*CONVERSATIONS, WITH_SYSTEM):
        try:  # pieces() also finds each reply in the text, to train it
            list(template.pieces(conversation))
        except (SdkError, ValueError, TypeError, KeyError) as error:
            if conversation is WITH_SYSTEM and spec.jinja and type(error) is ValueError:
                continue  # the template's own refusal (raise_exception) of a system prompt
            yield (f"does not render a {len(conversation)}-message conversation: "
                   f"{type(error).__name__}: {error}")
            break  # the longer ones fail the same way


CHECKS: dict[str, Callable[[Any, Registry], Iterator[str]]] = {
    "models": model_problems, "datasets": dataset_problems, "templates": template_problems,
}


def reference(field: str, name: str, kind: str, registry: Registry) -> Iterator[str]:
    if name in registry.entries[kind]:
        return
    close = difflib.get_close_matches(name, registry.names(kind), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f" (`sdk {kind}` lists them)"
    yield f"{field} '{name}' is no registered {KINDS[kind][0]}{hint}"


def hub_problems(hub_ids: Any, registry: Registry) -> Iterator[str]:
    for hub, repo_id in dict(hub_ids).items():
        if hub not in registry.entries["hubs"]:
            close = difflib.get_close_matches(hub, registry.names("hubs"), n=1)
            hint = f"did you mean '{close[0]}'?" if close else (
                f"the hubs: {', '.join(registry.names('hubs'))}")
            yield f"hub_ids has hub '{hub}', which is no registered hub; {hint}"
        if not isinstance(repo_id, str) or not repo_id:
            yield f"hub_ids['{hub}'] is {repo_id!r}; give the repository id as text"


def names_problems(field: str, value: Any) -> Iterator[str]:
    """A field that takes a tuple of names: a bare string would be read letter by letter."""
    if isinstance(value, str):
        yield f"{field} is the string {value!r}; give a tuple: ({value!r},)"
    elif not all(isinstance(item, str) and item for item in value):
        yield f"{field} is {value!r}; give a tuple of non-empty strings"


def callable_problems(field: str, ref: CallableRef | None) -> Iterator[str]:
    """A ``"module:function"`` whose module cannot be found, or whose module's source defines
    no such name; the module is found and its source read, not imported."""
    if ref is None or callable(ref):
        return
    module, colon, attribute = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not (colon and module and attribute):
        yield f"{field} is {ref!r}; give a callable or 'module:function'"
        return
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    if found is None:
        yield f"{field} '{ref}' names module '{module}', which cannot be imported"
        return
    name = attribute.split(".")[0]  # "module:Class.method": the class
    defined = top_level_names(found.origin) if found.has_location else None
    if defined is None or name in defined:
        return
    close = difflib.get_close_matches(name, sorted(defined), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"its file is {found.origin}"
    yield f"{field} '{ref}': module '{module}' defines no '{name}'; {hint}"


@functools.cache  # plugins name a few modules many times (every model type's loader)
def top_level_names(source_file: str) -> frozenset[str] | None:
    """The names a module's source binds at its top level (functions, classes, assignments,
    imports, in if/try/with blocks too); None where its source cannot tell: no Python source,
    a star import, or a module-level ``__getattr__``."""
    try:
        tree = ast.parse(Path(source_file).read_bytes(), source_file)
    except (OSError, SyntaxError, ValueError):
        return None
    names: set[str] = set()
    statements = list(tree.body)
    while statements:
        node = statements.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue  # what its body binds is not the module's
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any(alias.name == "*" for alias in node.names):
                return None
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.With)):
            targets = (node.targets if isinstance(node, ast.Assign) else
                       [item.optional_vars for item in node.items if item.optional_vars]
                       if isinstance(node, ast.With) else [node.target])
            names |= {n.id for target in targets for n in ast.walk(target)
                      if isinstance(n, ast.Name)}
        # the statements inside if/try/with/for blocks bind top-level names too
        for block in ("body", "orelse", "finalbody", "handlers"):
            statements += getattr(node, block, [])
    return None if "__getattr__" in names else frozenset(names)
