"""The ``sdk`` command. Listing commands stay light: torch and transformers are imported only
inside the commands that train or generate."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from sdk import __version__, compat
from sdk.config import (
    GGUF_TYPES,
    OPTION_GROUPS,
    OTHER_TOOLS_FLAGS,
    PUSH_GGUF_HELP,
    PUSH_TRAINING_STATE_HELP,
    DeployArguments,
    ExportArguments,
    InferArguments,
    PreviewArguments,
    SftArguments,
    base_type,
    build_arguments,
    field_types,
    read_config_file,
)
from sdk.data.readers import cannot_read
from sdk.errors import SdkError, UnknownName
from sdk.eval.metrics import METHODS, METRICS
from sdk.options import arguments_class, plugin_options, refuse_other_tuners_options
from sdk.plugins import (
    NO_THIRD_PARTY_ENV_VAR,
    PLUGINS_ENV_VAR,
    PluginInfo,
    PluginSet,
    load_plugins,
)
from sdk.registry import Registry, model_template


class Choice(click.Choice):
    """A flag's values, any case; other tools' spellings of them (compat.THEIR_VALUES, e.g.
    ms-swift's --attn_impl flash_attn) read as ours, and --help lists only ours."""

    def __init__(self, choices: Sequence[str], theirs: dict[str, str]) -> None:
        super().__init__(choices, case_sensitive=False)
        self.theirs = theirs

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        return super().convert(self.theirs.get(str(value).lower(), value), param, ctx)


class Flag(click.Option):
    """An option spelled ``--flag-name`` and ``--flag_name``; help shows the dashed one, under
    the heading of its ``group`` (OPTION_GROUPS)."""

    def __init__(self, *args: Any, group: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        spellings = self.opts
        self.opts = [o for o in spellings if o.replace("_", "-") == o
                     or o.replace("_", "-") not in spellings]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = spellings


def spellings(name: str) -> list[str]:
    dashed = "--" + name.replace("_", "-")
    underscored = "--" + name
    return [dashed] if dashed == underscored else [dashed, underscored]


class SdkCommand(click.Command):
    """Lets a list flag take several values: ``--dataset a b`` = ``--dataset a --dataset b``;
    an unknown flag that another tool spells differently gets our spelling, one of the
    ``options_of`` command (name, arguments class) that this one leaves out says so."""

    def __init__(self, *args: Any, options_of: tuple[str, type] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options_of = options_of

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.NoSuchOption as error:
            name = error.option_name.lstrip("-").replace("-", "_")
            ours = OTHER_TOOLS_FLAGS.get(name)
            params = self.get_params(error.ctx) if error.ctx else self.params
            options = {opt for p in params for opt in p.opts}
            if ours and f"--{ours.split()[0]}" in options:
                error.message = (f"No such option '{error.option_name}': here it is "
                                 f"--{ours}.")
                error.possibilities = None
            elif self.options_of and name in self.options_of_names(error.ctx):
                error.message = (f"No such option '{error.option_name}': it is an option of "
                                 f"`sdk {self.options_of[0]}` that does not change what this "
                                 "command does; leave it out.")
                error.possibilities = None
            raise

    def options_of_names(self, ctx: click.Context | None) -> set[str]:
        """The option names of the ``options_of`` command, its plugins' options included."""
        names = set(field_types(self.options_of[1]))
        if ctx is not None and self.options_of[0] == "sft":
            names |= set(plugin_options(registry(ctx))[0])
        return names

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        ctx.meta[HELP_SFT_TYPE] = chosen_tuner(args)  # --help is shown while parsing
        args = self.take_foreign_flags(ctx, args)
        multi = {opt for p in self.get_params(ctx) if getattr(p, "multiple", False)
                 for opt in p.opts}
        split = []
        for token in args:  # `--dataset=a b` reads as `--dataset a b`
            flag, equals, value = token.partition("=")
            split += [flag, value] if equals and flag in multi else [token]
        expanded, current, has_value = [], None, False
        for token in split:
            if token in multi:
                current, has_value = token, False
            elif current and not token.startswith("-"):
                if has_value:
                    expanded.append(current)
                has_value = True
            else:
                current = None
            expanded.append(token)
        return super().parse_args(ctx, expanded)

    def take_foreign_flags(self, ctx: click.Context, args: list[str]) -> list[str]:
        """``args`` without the flags of other tools that this command reads (sdk.compat),
        kept in ``ctx.meta[FOREIGN]`` by name: ``--flag``'s value is what follows up to the
        next flag (several values: a list; none: true)."""
        options = {opt for p in self.get_params(ctx) for opt in p.opts}
        foreign: dict[str, Any] = {}
        kept, current = [], None
        for token in args:
            if token.startswith("--"):
                flag, equals, value = token.partition("=")
                name = flag[2:].replace("-", "_")
                current = None
                if flag not in options and compat.foreign_keys([name], (), self.name or ""):
                    foreign[name] = [value] if equals else []
                    current = None if equals else name
                    continue
            elif current is not None:
                foreign[current].append(token)
                continue
            kept.append(token)
        ctx.meta[FOREIGN] = {name: (values[0] if len(values) == 1 else values or "true")
                             for name, values in foreign.items()}
        return kept

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The options under a heading per group, in OPTION_GROUPS' order; with ``--sft-type
        X`` on the command line, only X's tuner options, else each with the tuners it is for."""
        tuner = ctx.meta.get(HELP_SFT_TYPE)
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):  # the usage line has them
                continue
            group = getattr(param, "group", None) or "other"
            owners = getattr(param, "tuners", None)
            if owners and tuner and tuner not in owners:
                continue
            if owners and not tuner:
                record = (record[0], f"{record[1]}  [tuners: {', '.join(owners)}]")
            sections.setdefault(group, []).append(record)
        order = [*OPTION_GROUPS, *sorted(set(sections) - set(OPTION_GROUPS))]
        # one first column for all sections, as click's single list has
        width = min(30, max((len(term) for rows in sections.values() for term, _ in rows),
                            default=0))
        for group in sorted(sections, key=order.index):
            title = OPTION_GROUPS.get(group, group.capitalize()) + " options"
            if group == "tuner" and tuner:
                title += f" (--sft-type {tuner})"
            with formatter.section(title):
                formatter.write_dl([(term.ljust(width), text) for term, text in sections[group]])


HELP_SFT_TYPE = "sdk.help_sft_type"
FOREIGN = "sdk.foreign_flags"


def chosen_tuner(args: Sequence[str]) -> str | None:
    """The last ``--sft-type X`` / ``--sft_type=X`` of a command line, read before click
    parses it."""
    chosen = None
    for token, following in zip(args, [*args[1:], None], strict=True):
        flag, equals, value = token.partition("=")
        if flag in ("--sft-type", "--sft_type"):
            chosen = value if equals else following
    return chosen


def flag(f: dataclasses.Field, annotation: Any) -> Flag:
    """The click option of an arguments field; it defaults to None so the command can tell
    which flags were given."""
    kind = base_type(annotation)
    default = f.default_factory() if callable(f.default_factory) else f.default
    help_text = f.metadata["help"]
    if default not in (None, [], ""):
        help_text += f"  [default: {default}]"
    extra: dict[str, Any] = {}
    if kind is list:
        extra = {"multiple": True}
    elif kind is bool:
        extra = {"type": click.BOOL, "is_flag": False, "flag_value": "true"}
    elif kind in (int, float):
        extra = {"type": kind}  # choices among numbers are checked by build_arguments
    elif f.metadata.get("choices"):
        extra = {"type": Choice(f.metadata["choices"], compat.THEIR_VALUES.get(f.name, {}))}
    return Flag([*spellings(f.name), f.name], default=None, help=help_text,
                group=f.metadata["group"], **extra)


def options_from(cls: type) -> Callable[[Callable], Callable]:
    """Click options for every field of an arguments dataclass."""
    types = field_types(cls)

    def decorate(func: Callable) -> Callable:
        params = getattr(func, "__click_params__", [])
        params += [flag(f, types[f.name]) for f in reversed(dataclasses.fields(cls))]
        func.__click_params__ = params  # type: ignore[attr-defined]
        return click.option("--config", "config_file", cls=Flag, default=None, group="other",
                            type=click.Path(dir_okay=False),
                            help="YAML or JSON file of options; flags override it.")(func)

    return decorate


# the help group of a plugin's options, by the kind of thing that declares them
KIND_GROUPS = {"tuners": "tuner", "hubs": "hub", "formats": "data"}


class PluginOptionsCommand(SdkCommand):
    """A command that also takes the options that every registered plugin of
    ``option_kinds`` declares (`sdk sft`: tuners, hubs, formats; `sdk datasets preview`: hubs
    and formats). Each such option has ``group`` and ``tuners`` (the tuners that own it; empty
    for a hub's or format's)."""

    def __init__(self, *args: Any, option_kinds: tuple[str, ...] = tuple(KIND_GROUPS),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.option_kinds = option_kinds

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        if "plugin_flags" not in ctx.meta:
            options, _ = plugin_options(registry(ctx))
            flags = []
            for option in options.values():
                if option.kind not in self.option_kinds:
                    continue
                made = flag(option.field, option.annotation)
                made.group = KIND_GROUPS[option.kind]
                made.tuners = (option.owners  # type: ignore[attr-defined]
                               if option.kind == "tuners" else ())
                flags.append(made)
            ctx.meta["plugin_flags"] = flags
        return [*params[:-1], *ctx.meta["plugin_flags"], params[-1]]  # --help stays last


def given(params: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v
            for k, v in params.items() if v is not None and v != ()}


# A command that did its work while a plugin failed to load ends with this status (not 0, so
# that scripts and CI notice; not 1, the status of a command that failed).
PLUGIN_ERROR_EXIT = 3


class SdkGroup(click.Group):
    """Adds plugin commands; prints a line per broken plugin before any command runs; turns
    SdkError into a clean message and exit status 1; a broken plugin makes a command that
    succeeded exit with PLUGIN_ERROR_EXIT."""

    def _with_plugin_commands(self, ctx: click.Context) -> None:
        plugins = plugin_set(ctx)
        if not getattr(plugins, "commands_added", False):
            plugins.commands_added = True
            plugins.add_commands(self)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._with_plugin_commands(ctx)
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        self._with_plugin_commands(ctx)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context) -> Any:
        broken = report_plugins(ctx)
        try:
            result = super().invoke(ctx)
        except UnknownName as error:
            raise click.ClickException(str(error) + may_be_why(error, broken)) from None
        except SdkError as error:
            raise click.ClickException(str(error)) from None
        if broken:
            ctx.exit(PLUGIN_ERROR_EXIT)
        return result


def plugin_set(ctx: click.Context) -> PluginSet:
    root = ctx.find_root()
    if "plugins" not in root.meta:
        try:
            root.meta["plugins"] = load_plugins(root.params.get("plugin") or (),
                                                third_party=not root.params.get("no_third_party"))
        except SdkError as error:
            raise click.ClickException(str(error)) from None
    return root.meta["plugins"]


def registry(ctx: click.Context) -> Registry:
    return plugin_set(ctx).registry


def report_plugins(ctx: click.Context) -> list[PluginInfo]:
    """Print the registrations another plugin replaced, the names two plugins register, and
    a line for each plugin that failed to load (its hooks are run now, to find those that
    raise); give back the latter."""
    plugins = plugin_set(ctx)
    for notice in plugins.registry.override_notices():
        click.echo(notice, err=True)
    for info in plugins.info.values():
        for conflict in info.conflicts:
            click.echo(f"warning: plugin {info.name}: {conflict}", err=True)
    broken = plugins.failures()
    for info in broken:
        click.echo(info.failure_line(), err=True)
    return broken


def may_be_why(error: UnknownName, broken: list[PluginInfo]) -> str:
    """What to add to an unknown name's message when a plugin failed to load."""
    if not broken:
        return ""
    from sdk.catalogue import provider

    names = [info.name for info in broken]
    owner = provider(error.kind, error.name)
    if owner in names:
        return f" {owner} is installed but failed to load (see above): fix or reinstall it."
    if len(names) == 1:
        return f" Plugin {names[0]} failed to load (see above); it may be what registers it."
    return (f" Plugins {', '.join(names)} failed to load (see above); one of them may be what "
            "registers it.")


def cell(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{key}: {item}" for key, item in value.items())
    return str(value or "")


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        click.echo("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def emit(rows: list[dict[str, Any]], columns: Sequence[str], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
    else:
        print_table(rows, columns)


json_flag = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@click.group(cls=SdkGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="sft-sdk")
@click.option("--plugin", multiple=True, type=click.Path(),
              help=f"Load a plugin from a .py file or package folder (also: {PLUGINS_ENV_VAR}).")
@click.option("--no-third-party-plugins", "no_third_party", is_flag=True,
              envvar=NO_THIRD_PARTY_ENV_VAR,
              help="Load only the built-in and first-party plugins (and --plugin files): "
              "whether another installed plugin breaks a command. "
              f"Also: {NO_THIRD_PARTY_ENV_VAR}=1.")
def cli(plugin: tuple[str, ...], no_third_party: bool) -> None:
    """Supervised fine-tuning of chat LLMs, built from plugins."""


@cli.group(invoke_without_command=True)
@json_flag
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """Every plugin: where it came from, its version, what it registered, its error;
    `sdk plugins check` validates what they registered."""
    if ctx.invoked_subcommand is not None:
        return
    plugin_info = plugin_set(ctx)
    registry(ctx)  # runs the hooks: what each registered, and the errors they raise
    rows = [info.as_dict() for info in plugin_info.info.values()]
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for row in rows:
        registered = "; ".join(f"{kind}: {', '.join(names)}"
                               for kind, names in row["registered"].items()) or "nothing"
        version = f" {row['version']}" if row["version"] else ""
        click.echo(f"{row['name']}{version} ({row['source']})")
        click.echo(f"    registers {registered}")
        if row["error"]:
            click.echo(f"    ERROR: {row['error']}")


@plugins.command("check")
@click.argument("names", nargs=-1)
@click.option("--plugin", "files", multiple=True, type=click.Path(),
              help="Load this plugin file and check it (alone, unless NAMES are given too).")
@click.pass_context
def plugins_check(ctx: click.Context, names: tuple[str, ...], files: tuple[str, ...]) -> None:
    """Validate what plugins registered (all, or NAMES as `sdk plugins` names them).

    Spec fields, cross-references (templates, formats, hubs), dataset files, templates
    rendering a standard conversation set, LoRA targets, config_model_types. Prints one line
    per problem and exits 1, else a summary."""
    from sdk.plugin_check import check_plugins

    plugin_info = plugin_set(ctx)
    plugin_info.load_files(files, "--plugin")
    chosen = [*names, *map(str, files)] or list(plugin_info.info)
    for name in chosen:
        if name not in plugin_info.info:
            close = difflib.get_close_matches(name, plugin_info.info, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise SdkError(f"No plugin is named '{name}'.{hint} `sdk plugins` lists them.")
    problems = check_plugins(plugin_info, chosen)
    for problem in problems:
        click.echo(problem)
    if problems:
        ctx.exit(1)
    counted = sum(len(names) for name in chosen
                  for names in plugin_info.info[name].registered.values())
    click.echo(f"{len(chosen)} plugin{'s' * (len(chosen) != 1)} checked, {counted} "
               f"registration{'s' * (counted != 1)}: no problems.")


def listing(kind: str, columns: Sequence[str], describe: Callable[[Any], dict[str, Any]],
            doc: str) -> None:
    @json_flag
    @click.pass_context
    def command(ctx: click.Context, as_json: bool) -> None:
        known = registry(ctx)
        rows = [{**describe(known.entries[kind][name].spec),
                 "plugin": known.entries[kind][name].plugin} for name in known.names(kind)]
        emit(rows, columns, as_json)

    command.__doc__ = doc
    cli.command(name=kind)(command)


@cli.command()
@json_flag
@click.option("--all", "show_all", is_flag=True,
              help="Also list the model types of first-party plugins that are not installed.")
@click.pass_context
def models(ctx: click.Context, as_json: bool, show_all: bool) -> None:
    """Model types (--model-type)."""
    from sdk.catalogue import first_party_plugins

    known = registry(ctx)
    rows = [{"model_type": s.model_type, "family": s.family, "template": s.template,
             "hub_ids": dict(s.hub_ids), "description": s.description,
             "converted_to": s.converted_to or None, "unsupported": s.unsupported or None,
             "loads": loads_as(s), "lora_target_modules": list(s.lora_target_modules),
             "config_model_types": list(s.config_model_types), "requires": list(s.requires),
             "requires_remote_code": s.requires_remote_code,
             "plugin": known.entries["models"][name].plugin, "installed": True}
            for name in known.names("models") for s in [known.get("models", name)]]
    columns = ["model_type", "family", "template", "loads", "hub_ids", "plugin"]
    if show_all:
        rows += [{"model_type": name, "plugin": plugin["name"], "installed": False,
                  "install": f"pip install {plugin['name']}"}
                 for plugin in first_party_plugins() for name in plugin.get("models", ())
                 if name not in known.entries["models"]]
        columns = ["model_type", "family", "template", "plugin", "installed"]
    if not as_json:
        for row in rows:
            row["installed"] = "yes" if row["installed"] else "no: " + row["install"]
    emit(rows, columns, as_json)

def loads_as(spec: Any) -> str:
    """How `sdk models` says a model type loads: as published, converted, or refused."""
    if spec.unsupported:
        return "refused"
    return f"converted to {spec.converted_to}" if spec.converted_to else "as published"


def template_row(spec: Any) -> dict[str, Any]:
    from sdk.templates.engine import reads_reasoning, reads_tools, stop_words

    return {"name": spec.name, "description": spec.description,
            "default_system": spec.default_system,
            "stop_words": stop_words(spec, spec.special_tokens),
            "tools": bool(spec.jinja) and reads_tools(spec.jinja),
            "tool_calls": spec.tool_calls is not None,
            "reasoning": bool(spec.jinja) and reads_reasoning(spec.jinja)}


listing("templates", ("name", "description", "plugin"), template_row,
        "Chat templates (--template).")
@cli.group(invoke_without_command=True)
@json_flag
@click.pass_context
def datasets(ctx: click.Context, as_json: bool) -> None:
    """Datasets (--dataset); `sdk datasets preview NAME` shows samples as trained."""
    if ctx.invoked_subcommand is not None:
        return
    known = registry(ctx)
    rows = [{"name": s.name, "description": s.description, "license": s.license,
             "format": s.format, "files": list(s.files), "hub_ids": dict(s.hub_ids),
             "plugin": known.entries["datasets"][name].plugin}
            for name in known.names("datasets") for s in [known.get("datasets", name)]]
    emit(rows, ("name", "description", "license", "plugin"), as_json)


@datasets.command("preview", cls=PluginOptionsCommand, options_of=("sft", SftArguments),
                  option_kinds=("hubs", "formats"))
@click.argument("names", nargs=-1)
@click.option("-n", "--num", "count", cls=Flag, group="data", type=int, default=3,
              show_default=True, help="How many rows to show.")
@options_from(PreviewArguments)
@click.pass_context
def datasets_preview(ctx: click.Context, names: tuple[str, ...], count: int,
                     config_file: str | None, **params: Any) -> None:
    """Rows of a dataset rendered with a template, trained spans marked, and their lengths:
    sdk datasets preview NAME [--model-type T | --template T] [-n 3]."""
    values = given(params)
    if names:  # else --dataset, or the config file's dataset
        values["dataset"] = [*names, *values.get("dataset", [])]
    # a run's config file previews its data: the options of sdk sft that do not change what a
    # preview shows (another tuner's included) are checked as sdk sft would, then left out
    known = registry(ctx)
    config = read_config_file(config_file, arguments_class(known)) if config_file else {}
    previewed = arguments_class(known, core=PreviewArguments, kinds=("hubs", "formats"))
    names = {f.name for f in dataclasses.fields(previewed)}
    merged = compat.resolve_names(compat.finish(config | values), known)  # other tools' keys
    values = {name: value for name, value in merged.items() if name in names}
    arguments = build_arguments(previewed, values)
    from sdk.data.preview import run_preview

    run_preview(arguments, known, count)
listing("tuners", ("name", "description", "plugin"),
        lambda s: {"name": s.name, "description": s.description},
        "Tuners (--sft-type).")
listing("hubs", ("name", "description", "plugin"),
        lambda s: {"name": s.name, "description": s.description},
        "Hubs to download from and push to (--hub).")
listing("formats", ("name", "description", "plugin"),
        lambda s: {"name": s.name, "description": s.description},
        "Dataset record formats (--dataset-format).")


@cli.group()
def template() -> None:
    """Work with chat templates."""


@template.command("render")
@click.argument("name", required=False)
@click.option("--model-type", "--model_type", "model_type", cls=Flag,
              help="Use this model type's template.")
@click.option("--messages", required=True, type=click.Path(dir_okay=False),
              help="JSON file: a list of {role, content} messages (or a record with such a "
              "list under \"messages\").")
@click.option("--add-generation-prompt", "--add_generation_prompt", "add_generation_prompt",
              cls=Flag, is_flag=True, help="End with the opening of an assistant turn.")
@click.option("--enable-thinking", "--enable_thinking", "enable_thinking", cls=Flag,
              type=click.BOOL, help="true|false: passed to the template as enable_thinking "
              "(as `sdk sft --enable-thinking`); default: not passed.")
@click.pass_context
def template_render(ctx: click.Context, name: str | None, model_type: str | None,
                    messages: str, add_generation_prompt: bool,
                    enable_thinking: bool | None) -> None:
    """Print exactly the text a template makes of the messages in a file."""
    from sdk.templates.engine import Template, with_thinking

    if bool(name) == bool(model_type):
        raise SdkError("Give a template NAME or --model-type, one of the two.")
    known = registry(ctx)
    spec = model_template(known, known.get("models", model_type) if model_type else None, name)
    try:
        with open(messages, encoding="utf-8") as handle:
            conversation = json.load(handle)
    except FileNotFoundError:
        raise SdkError(f"Messages file '{messages}' (--messages) does not exist.") from None
    except OSError as error:
        raise cannot_read(messages, error) from None
    except json.JSONDecodeError as error:
        extra = (" It holds more than one JSON value (a .jsonl dataset?): give one "
                 "conversation, or see a dataset's rows rendered with `sdk datasets preview "
                 "FILE --template NAME`." if error.msg == "Extra data" else "")
        raise SdkError(f"Messages file '{messages}' is not valid JSON: {error}.{extra}") from None
    except UnicodeDecodeError as error:
        raise SdkError(f"Messages file '{messages}' is not valid JSON: {error}") from None
    if isinstance(conversation, list):  # the messages alone: read as a messages-format row
        conversation = {"messages": conversation}  # (tool calls and results too)
    if isinstance(conversation, dict):  # a record of any format: messages, alpaca, sharegpt...
        from sdk.data.conversations import detect_format
        from sdk.specs import resolve_callable

        data_format = (known.get("formats", "messages") if "messages" in conversation else
                       detect_format(f"Messages file '{messages}'", conversation, known,
                                     'Give a JSON list of {"role": ..., "content": ...} '
                                     "messages, or rename the record's fields."))
        try:
            convert = resolve_callable(data_format.to_messages)
            conversation = (convert(conversation, data_format.options())  # at their defaults
                            if data_format.options else convert(conversation))
        except ValueError as error:
            raise SdkError(f"Messages file '{messages}': {error} (read as {data_format.name} "
                           "format).") from None
    try:
        text = Template(with_thinking(spec, enable_thinking)).render(conversation,
                                                                     add_generation_prompt)
    except (ValueError, TypeError, AttributeError) as error:
        raise SdkError(f"Messages file '{messages}': {error}. Expected a JSON list of "
                       '{"role": ..., "content": ...} objects.') from None
    click.echo(text, nl=False)


@cli.command(cls=PluginOptionsCommand)
@options_from(SftArguments)
@click.option("--dry-run", "--dry_run", "dry_run", cls=Flag, is_flag=True,
              help="Print the plan (every setting and automatic choice, the run folder) and "
                   "the data report, then exit: reads the data and the tokenizer, never the "
                   "weights, and creates no run folder.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: print JSON.")
@click.pass_context
def sft(ctx: click.Context, config_file: str | None, dry_run: bool, as_json: bool,
        **params: Any) -> None:
    """Fine-tune a model: sdk sft --model-type T --dataset D [--sft-type lora|full]."""
    known = registry(ctx)
    values = given(params)
    arguments = build_arguments(arguments_class(known), values, config_file,
                                ctx.meta.get(FOREIGN), known)
    refuse_other_tuners_options(values, known.get("tuners", arguments.sft_type), known)
    if as_json and not dry_run:
        raise SdkError("--json prints the plan of --dry-run; add --dry-run.")
    if dry_run:
        from sdk.train.sft import dry_run as print_plan

        print_plan(arguments, known, as_json)
        return
    from sdk.train.distributed import launch_processes_if_asked

    launch_processes_if_asked(sys.argv[1:])
    from sdk.train.sft import run_sft

    try:
        run_sft(arguments, known)
    except KeyboardInterrupt:
        click.echo("[sdk] interrupted; the checkpoints saved so far are complete. To go on "
                   "from the last one, run the same command with --resume-from-checkpoint "
                   "auto.", err=True)
        raise click.Abort() from None


@cli.command(cls=SdkCommand)
@options_from(InferArguments)
@click.pass_context
def infer(ctx: click.Context, config_file: str | None, **params: Any) -> None:
    """Chat with a fine-tuned checkpoint (--ckpt-dir) or a model type (--model-type); with
    --dataset or --val-dataset-from-run, predict every row into a file and score it."""
    arguments = build_arguments(InferArguments, given(params), config_file,
                                ctx.meta.get(FOREIGN), registry(ctx))
    if arguments.dataset or arguments.val_dataset_from_run:
        from sdk.infer.predict import run_predict

        run_predict(arguments, registry(ctx))
        return
    from sdk.infer.chat import run_infer

    run_infer(arguments, registry(ctx))


@cli.command(cls=SdkCommand)
@options_from(DeployArguments)
@click.pass_context
def deploy(ctx: click.Context, config_file: str | None, **params: Any) -> None:
    """Serve a checkpoint (--ckpt-dir) or a model type (--model-type) over an OpenAI-compatible
    HTTP API (/v1/chat/completions, /v1/models): sdk deploy --ckpt-dir DIR [--port 8000]."""
    arguments = build_arguments(DeployArguments, given(params), config_file)
    from sdk.infer.deploy import run_deploy

    run_deploy(arguments, registry(ctx))


@cli.command("eval")
@click.option("--predictions", required=True, type=click.Path(dir_okay=False),
              help="A predictions file (jsonl with response and label) from `sdk infer "
              "--dataset`.")
@click.option("--method", type=click.Choice(METHODS), default=METHODS[0], show_default=True,
              help="llama-factory: exactly LLaMA-Factory's and ChatGLM-6B's numbers (jieba "
              "words as written for ROUGE, characters for BLEU-4); words: lower-cased words "
              "for both (Chinese characters one by one for BLEU-4).")
@json_flag
def eval_predictions(predictions: str, method: str, as_json: bool) -> None:
    """ROUGE-1/2/L and BLEU-4 (percent) of predictions against their labels, by default as
    LLaMA-Factory and the ChatGLM fine-tuning eval compute them."""
    from pathlib import Path

    from sdk.eval.predictions import evaluate_file

    scores = evaluate_file(Path(predictions), method=method)
    if as_json:
        click.echo(json.dumps(scores))
    else:
        print_table([{"metric": "method", "score": method}]
                    + [{"metric": name, "score": f"{scores[name]:.4f}"} for name in METRICS],
                    ("metric", "score"))


@cli.command()
@click.argument("run_dir")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Image to write; its extension picks the format (.png, .svg, .pdf).  "
              "[default: RUN_DIR/loss.png]")
def plot(run_dir: str, output: str | None) -> None:
    """Plot a run's training (and eval) loss against the step from its logging.jsonl; works
    on a run still training: sdk plot RUN_DIR [--output FILE]."""
    from pathlib import Path

    from sdk.train.plot import plot_run

    click.echo(str(plot_run(Path(run_dir), Path(output) if output else None)))


@cli.command(cls=SdkCommand)
@options_from(ExportArguments)
@click.pass_context
def export(ctx: click.Context, config_file: str | None, **params: Any) -> None:
    """Write a checkpoint as a standalone model folder (weights, tokenizer, chat template):
    sdk export --ckpt-dir DIR [--merge-lora] [--output-dir OUT]."""
    arguments = build_arguments(ExportArguments, given(params), config_file)
    from sdk.export import run_export

    click.echo(str(run_export(arguments, registry(ctx))))


@cli.command()
@click.option("--ckpt-dir", "--ckpt_dir", "ckpt_dir", cls=Flag, required=True,
              help="A checkpoint of `sdk sft`, or its run folder (the newest complete one).")
@click.option("--hub", help="Hub to push to (see `sdk hubs`; default: $SFT_SDK_HUB, else "
              "huggingface).")
@click.option("--repo-id", "--repo_id", "repo_id", cls=Flag, required=True,
              help="Repository to push to, e.g. your-name/my-model (created if needed).")
@click.option("--private/--public", default=True,
              help="Visibility of a repository created now.  [default: private]")
@click.option("--token", "--hub-token", "--hub_token", "token", cls=Flag,
              help="Token for the hub (default: its usual environment variable or "
              "login; prefer those, a flag ends up in the shell history).")
@click.option("--push-training-state", "--push_training_state", "training_state", cls=Flag,
              is_flag=True, help=PUSH_TRAINING_STATE_HELP)
@click.option("--path-in-repo", "--path_in_repo", "path_in_repo", cls=Flag, default="",
              help="Folder of the repository to put the checkpoint's files in (default: its "
              "root).")
@click.option("--push-gguf", "--push_gguf", "push_gguf", cls=Flag,
              type=click.Choice(GGUF_TYPES), help=PUSH_GGUF_HELP)
@click.pass_context
def push(ctx: click.Context, ckpt_dir: str, hub: str | None, repo_id: str, private: bool,
         token: str | None, training_state: bool, path_in_repo: str,
         push_gguf: str | None) -> None:
    """Upload a checkpoint with a model card; run it again to complete a push that failed."""
    from sdk.hubs import default_hub
    from sdk.hubs.push import Destination, check_repo_id, push_checkpoint
    from sdk.options import hub_keywords
    from sdk.runs.checkpoint_files import check_checkpoint
    from sdk.runs.run_dir import ARGS_FILE, find_checkpoint, read_saved_arguments
    from sdk.tuners.lora import check_adapter_fits_saved_base

    known = registry(ctx)
    chosen = known.get("hubs", hub or default_hub())
    check_repo_id(chosen, repo_id, "--repo-id")
    checkpoint = find_checkpoint(ckpt_dir, "--ckpt-dir")
    check_checkpoint(checkpoint)  # a damaged file is refused, not published
    check_adapter_fits_saved_base(checkpoint)
    # a hub's own options as the run that trained the checkpoint set them
    saved = read_saved_arguments(checkpoint / ARGS_FILE)
    if push_gguf:
        from sdk.export_gguf import check_spec

        check_spec(known.get("models", saved["model_type"]))
    destination = Destination(chosen, repo_id, private, token, training_state,
                              hub_keywords(chosen, saved), push_gguf)
    click.echo(push_checkpoint(checkpoint, destination, known, path_in_repo.strip("/")))


@cli.command("web-ui")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; anything but 127.0.0.1 exposes the page to the "
              "network: add --auth.")
@click.option("--port", default=7860, show_default=True, type=click.IntRange(0, 65535),
              help="Port to serve on.")
@click.option("--output-dir", "--output_dir", "output_dir", cls=Flag, default="output",
              show_default=True, help="Where runs are trained and read from (as `sdk sft "
              "--output-dir`); uploads go under it.")
@click.option("--share", is_flag=True,
              help="Also make a public gradio.live link (off unless given).")
@click.option("--auth", metavar="USER:PASS",
              help="Ask for this user name and password before showing the page.")
@click.option("--max-runs", "--max_runs", "max_runs", cls=Flag, default=1, show_default=True,
              type=click.IntRange(1), help="Training runs the page may run at once.")
@click.pass_context
def web_ui(ctx: click.Context, host: str, port: int, output_dir: str, share: bool,
           auth: str | None, max_runs: int) -> None:
    """Train, watch runs, preview data and chat in the browser (gradio): every action is the
    `sdk` command the page shows. Needs: pip install 'sft-sdk[webui]'."""
    from pathlib import Path

    from sdk.webui.serve import serve

    root = ctx.find_root().params
    # the commands the page runs load the same plugins as the page
    group_flags = [word for path in root.get("plugin") or ()
                   for word in ("--plugin", str(Path(path).resolve()))]
    if root.get("no_third_party"):
        group_flags.append("--no-third-party-plugins")
    serve(registry(ctx), Path(output_dir), host, port, share, auth, max_runs, group_flags)


def main() -> None:
    # Fail fast with a clean message on a closed stdout (`sdk models | head`).
    try:
        cli(prog_name="sdk")
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
