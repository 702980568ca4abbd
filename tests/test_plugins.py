"""Plugin discovery: entry points, --plugin files, SFT_SDK_PLUGINS, isolation, duplicates."""

import json
import textwrap

import pytest

from sdk.plugins import load_plugins


def plugin_file(tmp_path, name, body):
    path = tmp_path / f"{name}.py"
    path.write_text("from sdk import hookimpl\nfrom sdk.specs import TemplateSpec\n"
                    + textwrap.dedent(body))
    return path


TEMPLATE_PLUGIN = """
    @hookimpl
    def register_templates(register):
        register(TemplateSpec(name="{name}", user_format="Q: {{content}}\\n",
                              assistant_prefix="A: ", description="{description}"){override})
"""


def template_plugin(tmp_path, file_name, name="mine", description="", override=""):
    return plugin_file(tmp_path, file_name, TEMPLATE_PLUGIN.format(
        name=name, description=description, override=override))


def test_installed_first_party_plugins_are_found_through_entry_points():
    plugins = load_plugins()
    smollm = plugins.info["sft-plugin-smollm"]
    assert smollm.source == "entry point" and smollm.version
    registry = plugins.registry
    assert registry.entry("models", "smollm2-135m-instruct").plugin == "sft-plugin-smollm"
    assert registry.entry("datasets", "self-cognition").plugin == "sft-plugin-self-cognition"
    assert {"lora", "full"} <= set(registry.names("tuners"))
    assert {"chatml", "default", "smollm2"} <= set(registry.names("templates"))


def test_plugin_file_and_environment_variable(run_cli, tmp_path, monkeypatch):
    by_flag = template_plugin(tmp_path, "by_flag", name="from-flag")
    by_env = template_plugin(tmp_path, "by_env", name="from-env")
    monkeypatch.setenv("SFT_SDK_PLUGINS", str(by_env))
    result = run_cli("--plugin", by_flag, "templates", "--json")
    assert result.exit_code == 0
    names = {row["name"]: row["plugin"] for row in json.loads(result.stdout)}
    assert names["from-flag"] == str(by_flag) and names["from-env"] == str(by_env)


def test_a_broken_plugin_is_reported_and_the_rest_keep_working(run_cli, tmp_path):
    broken_import = plugin_file(tmp_path, "broken_import", "import no_such_module_here\n")
    broken_hook = plugin_file(tmp_path, "broken_hook", """
        @hookimpl
        def register_templates(register):
            register(TemplateSpec(name="half-done"))
            raise RuntimeError("oops in hook")
    """)
    good = template_plugin(tmp_path, "good", name="still-here")
    args = ["--plugin", broken_import, "--plugin", broken_hook, "--plugin", good]
    listing = run_cli(*args, "templates")
    assert listing.exit_code == 3  # listed, but not as if all were well
    assert "still-here" in listing.stdout and "smollm2" in listing.stdout
    assert listing.stderr.splitlines() == [
        f"error: plugin {broken_import}:3: ModuleNotFoundError: No module named "
        f"'no_such_module_here' (to fix it: `sdk plugins check --plugin {broken_import}` lists "
        f"its problems; to run without it: leave out --plugin {broken_import})",
        f"error: plugin {broken_hook}:7: register_templates raised RuntimeError: oops in hook "
        f"(to fix it: `sdk plugins check --plugin {broken_hook}` lists its problems; to run "
        f"without it: leave out --plugin {broken_hook})"]
    report = run_cli(*args, "plugins", "--json")
    errors = {row["name"]: row["error"] for row in json.loads(report.stdout)}
    assert "ModuleNotFoundError" in errors[str(broken_import)]
    assert "register_templates raised RuntimeError: oops in hook" in errors[str(broken_hook)]
    assert errors[str(good)] is None


@pytest.mark.parametrize("body, error", [
    ("@hookimpl\ndef register_template(register):\n    pass\n",
     "@hookimpl register_template is not a hook of sft-sdk; did you mean register_templates?"),
    ("def register_templates(register):\n    pass\n",
     "register_templates lacks @hookimpl (from sdk import hookimpl), so it is never called"),
    ("@hookimpl\ndef register_templates():\n    pass\n",
     "register_templates takes no argument; it is called with register"),
])
def test_a_hook_that_would_never_be_called_is_reported(run_cli, tmp_path, body, error):
    plugin = plugin_file(tmp_path, "mistaken", body)
    listing = run_cli("--plugin", plugin, "templates")
    assert listing.exit_code == 3 and f"error: plugin {plugin}: {error} (" in listing.stderr
    report = run_cli("--plugin", plugin, "plugins", "--json")
    errors = {row["name"]: row["error"] for row in json.loads(report.stdout)}
    assert errors[str(plugin)].startswith(error)
    assert not any(errors[name] for name in errors if name.startswith("sdk."))  # built-ins


def test_two_plugins_registering_one_name_is_an_error_naming_both(run_cli, tmp_path):
    first = template_plugin(tmp_path, "first", name="dup")
    second = template_plugin(tmp_path, "second", name="dup")
    messages = tmp_path / "m.json"
    messages.write_text('[{"role": "user", "content": "hi"}]')
    result = run_cli("--plugin", first, "--plugin", second,
                     "template", "render", "dup", "--messages", messages)
    assert result.exit_code == 1
    assert "registered by both" in result.stderr
    assert str(first) in result.stderr and str(second) in result.stderr
    listing = run_cli("--plugin", first, "--plugin", second, "templates")  # not using it
    assert listing.exit_code == 0 and "chatml" in listing.stdout
    assert f"warning: plugin {first}: template 'dup' is also registered by {second}\n" in (
        listing.stderr)


def test_override_replaces_a_registration(run_cli, tmp_path):
    winner = template_plugin(tmp_path, "winner", name="chatml", description="mine",
                             override=", override=True")
    result = run_cli("--plugin", winner, "templates", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["chatml"]["plugin"] == str(winner) and rows["chatml"]["description"] == "mine"


def test_a_plugin_can_add_a_command(run_cli, tmp_path):
    path = tmp_path / "cmd.py"
    path.write_text(textwrap.dedent("""
        import click
        from sdk import hookimpl

        @hookimpl
        def register_commands(cli):
            @cli.command()
            def hello():
                "Say hello."
                click.echo("hello from a plugin")
    """))
    result = run_cli("--plugin", path, "hello")
    assert result.exit_code == 0 and result.stdout == "hello from a plugin\n"


def test_a_missing_plugin_file_is_a_clear_error(run_cli, tmp_path):
    result = run_cli("--plugin", tmp_path / "nope.py", "models")
    assert result.exit_code == 1 and "does not exist" in result.stderr


def test_the_example_third_party_plugin(run_cli, tmp_path):
    from conftest import REPO

    example = REPO / "examples" / "plugins" / "alpaca_template.py"
    messages = tmp_path / "m.json"
    messages.write_text('[{"role": "user", "content": "Name a colour."}]')
    result = run_cli("--plugin", example, "template", "render", "alpaca",
                     "--messages", messages, "--add-generation-prompt")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Below is an instruction that describes a task. Write a response that appropriately "
        "completes the request.\n\n### Instruction:\nName a colour.\n\n### Response:\n")


def test_errors_of_command_hooks_survive_collecting_the_registry(run_cli, tmp_path):
    path = tmp_path / "bad_cmd.py"
    path.write_text(textwrap.dedent("""
        from sdk import hookimpl

        @hookimpl
        def register_commands(cli):
            raise RuntimeError("no commands today")
    """))
    report = run_cli("--plugin", path, "plugins", "--json")
    errors = {row["name"]: row["error"] for row in json.loads(report.stdout)}
    assert "register_commands raised RuntimeError: no commands today" in errors[str(path)]


@pytest.mark.parametrize("body, error", [
    ("def broken(:\n", "SyntaxError"),
    ("from sdk import hookimpl\n@hookimpl\ndef register_templates(register, extra):\n    pass\n",
     "PluginValidationError"),
    ("from sdk import hookimpl\nfrom sdk.specs import TemplateSpec\n@hookimpl\n"
     "def register_models(register):\n    register(TemplateSpec(name='oops'))\n",
     "register_models got a TemplateSpec; it takes ModelSpec"),
])
def test_bad_plugins_are_reported_without_a_traceback(tmp_path, body, error):
    from test_cli import sdk_subprocess

    bad = tmp_path / "bad.py"
    bad.write_text(body)
    listing = sdk_subprocess("--plugin", bad, "models")
    assert listing.returncode == 3, listing.stderr
    assert "smollm2-135m-instruct" in listing.stdout
    assert error in listing.stderr and "Traceback" not in listing.stderr


def test_the_same_file_named_twice_is_loaded_once(tmp_path, monkeypatch):
    from test_cli import sdk_subprocess

    good = template_plugin(tmp_path, "good", name="once")
    monkeypatch.setenv("SFT_SDK_PLUGINS", str(good))
    result = sdk_subprocess("--plugin", good, "--plugin", f"./{good.name}", "templates",
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("once") == 1 and "Traceback" not in result.stderr


def test_a_command_that_works_without_a_broken_plugin_still_fails(run_cli, tmp_path):
    broken = plugin_file(tmp_path, "typo", """
        @hookimpl
        def register_templates(register):
            register(TemplateSpec(name="acme", assistant_sufix="<end>"))
    """)
    line = (f"error: plugin {broken}:6: register_templates raised TypeError: TemplateSpec has "
            "no field 'assistant_sufix'; did you mean 'assistant_suffix'? (to fix it: `sdk "
            f"plugins check --plugin {broken}` lists its problems; to run without it: leave out "
            f"--plugin {broken})\n")
    messages = tmp_path / "m.json"
    messages.write_text('[{"role": "user", "content": "hi"}]')
    render = ("template", "render", "chatml", "--messages", messages)
    rendered, clean = run_cli("--plugin", broken, *render), run_cli(*render)
    assert (rendered.exit_code, rendered.stderr) == (3, line)
    assert rendered.stdout == clean.stdout and clean.exit_code == 0  # its work done all the same
    unknown = run_cli("--plugin", broken, "template", "render", "acme", "--messages", messages)
    assert (unknown.exit_code, unknown.stderr) == (1, line + (
        "Error: Unknown template 'acme' (--template). `sdk templates` lists the installed ones. "
        f"Plugin {broken} failed to load (see above); it may be what registers it.\n"))


def test_an_installed_plugin_that_fails_to_load_names_its_distribution(run_cli, tmp_path,
                                                                        monkeypatch):
    # a module name no other test imports: sys.modules would hand back another test's module
    (tmp_path / "acme_broken.py").write_text("import json\nimport acme_missing_dependency\n")
    info = tmp_path / "acme_broken-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-broken\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sft_sdk]\nacme = acme_broken\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    listing = run_cli("models")
    assert listing.exit_code == 3 and "smollm2-135m-instruct" in listing.stdout
    assert listing.stderr == (
        f"error: plugin acme-broken: {tmp_path / 'acme_broken.py'}:2: ModuleNotFoundError: No "
        "module named 'acme_missing_dependency' (to fix it: `sdk plugins check acme-broken` "
        "lists its problems; to run without it: `pip uninstall acme-broken` or `sdk "
        "--no-third-party-plugins`)\n")
    without = run_cli("--no-third-party-plugins", "models")
    assert (without.exit_code, without.stderr, without.stdout) == (0, "", listing.stdout)


def test_an_unknown_name_of_a_first_party_plugin_that_failed_to_load_says_so():
    from sdk.cli import may_be_why
    from sdk.errors import UnknownName
    from sdk.plugins import PluginInfo

    error = UnknownName("qwen2.5-7b-instruct is provided by sft-plugin-qwen: pip install "
                        "sft-plugin-qwen", "models", "qwen2.5-7b-instruct")
    assert may_be_why(error, [PluginInfo("sft-plugin-qwen", "entry point")]) == (
        " sft-plugin-qwen is installed but failed to load (see above): fix or reinstall it.")
    assert may_be_why(error, []) == ""
