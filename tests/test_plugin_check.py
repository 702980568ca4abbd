"""`sdk plugins check`: one broken plugin per problem a plugin author meets (issue 23), and
run-time errors that blame the plugin's spec rather than the user's flags."""

import json
import textwrap

import pytest

HEADER = "from pathlib import Path\nfrom sdk import hookimpl\nfrom sdk.specs import *\n\n"


def plugin(tmp_path, body: str, name: str = "acme.py"):
    path = tmp_path / name
    path.write_text(HEADER + textwrap.dedent(body))
    return path


BROKEN = {
    "typo in a spec field": ("""
        @hookimpl
        def register_templates(register):
            register(TemplateSpec(name="acme", assistant_sufix="<end>"))
        """, ":8: register_templates raised TypeError: TemplateSpec has no field "
             "'assistant_sufix'; did you mean 'assistant_suffix'?"),
    "typo in a spec made at import": ("""
        ACME = ModelSpec(model_type="acme", family="acme", templat="chatml")
        """, ":6: TypeError: ModelSpec has no field 'templat'; did you mean 'template'?"),
    "unknown template": ("""
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="chatm",
                               hub_ids={"huggingface": "acme/acme"}))
        """, "model type 'acme': template 'chatm' is no registered template; did you mean "
             "'chatml'?"),
    "unknown hub": ("""
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="chatml",
                               hub_ids={"hugginface": "acme/acme"}))
        """, "hub_ids has hub 'hugginface', which is no registered hub; did you mean "
             "'huggingface'?"),
    "LoRA targets as a string": ("""
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="chatml",
                               hub_ids={"huggingface": "acme/acme"},
                               lora_target_modules="q_proj"))
        """, "lora_target_modules is the string 'q_proj'; give a tuple: ('q_proj',)"),
    "LoRA targets joined by a comma": ("""
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="chatml",
                               hub_ids={"huggingface": "acme/acme"},
                               lora_target_modules=("q_proj, v_proj",)))
        """, "lora_target_modules has 'q_proj, v_proj'; a module name has no spaces or commas"),
    "config_model_types malformed": ("""
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="chatml",
                               hub_ids={"huggingface": "acme/acme"},
                               config_model_types=("Acme Model",)))
        """, "config_model_types has 'Acme Model', which no config.json has"),
    "unknown dataset format": ("""
        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(name="acme-data", files=(str(Path(__file__)),),
                                 format="alpacca"))
        """, "dataset 'acme-data': format 'alpacca' is no registered data format; did you "
             "mean 'alpaca'?"),
    "missing dataset file": ("""
        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(name="acme-data", files=("data/acme.jsonl",)))
        """, "acme.jsonl', which does not exist (a relative path is read from the plugin's "
             "folder"),
    "template that does not compile": ("""
        @hookimpl
        def register_templates(register):
            register(TemplateSpec(name="acme", jinja="{% for m in messages %}{{ m.content }}"))
        """, "template 'acme': Template 'acme' has jinja that does not compile"),
    "callable in a missing module": ("""
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="chatml",
                               loader="acme_missing.load:load"))
        """, "loader 'acme_missing.load:load' names module 'acme_missing.load', which cannot "
             "be imported"),
    "callable that its module lacks": ("""
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="chatml",
                               loader="sdk.models.loader:load_from_hubb"))
        """, "loader 'sdk.models.loader:load_from_hubb': module 'sdk.models.loader' defines no "
             "'load_from_hubb'; did you mean 'load_from_hub'?"),
}


@pytest.mark.parametrize("problem", BROKEN)
def test_check_finds_each_broken_plugin_with_one_line(problem, run_cli, tmp_path):
    body, expected = BROKEN[problem]
    path = plugin(tmp_path, body)
    result = run_cli("plugins", "check", "--plugin", path)
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, lines
    assert expected in lines[0]
    assert f"{path}:" in lines[0]  # the plugin's file, at the line of its register call


def test_clean_plugin_passes_with_a_summary(run_cli, tmp_path):
    path = plugin(tmp_path, """
        @hookimpl
        def register_templates(register):
            register(TemplateSpec(name="acme", user_format="U: {content}\\n",
                                  assistant_prefix="A: ", assistant_suffix="<end>\\n"))

        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="acme",
                               hub_ids={"huggingface": "acme/acme", "modelscope": "acme/acme"},
                               lora_target_modules=("q_proj", "v_proj"),
                               config_model_types=("llama",)))
        """)
    result = run_cli("plugins", "check", "--plugin", path)
    assert result.exit_code == 0, result.output
    assert result.output == "1 plugin checked, 2 registrations: no problems.\n"


def test_template_that_leaves_out_the_replies_is_caught(run_cli, tmp_path):
    path = plugin(tmp_path, """
        @hookimpl
        def register_templates(register):
            register(TemplateSpec(name="acme", jinja="{% for m in messages %}[{{ m.role }}]"
                                                     "{% endfor %}"))
        """)
    result = run_cli("plugins", "check", "--plugin", path)
    assert result.exit_code == 1
    assert "template 'acme': does not render a 2-message conversation" in result.stdout


def test_first_party_plugins_pass_the_check(run_cli):
    result = run_cli("plugins", "check")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith("registrations: no problems.\n")


def test_check_names_an_unknown_plugin(run_cli):
    result = run_cli("plugins", "check", "sft-plugin-qwn")
    assert result.exit_code == 1
    assert "No plugin is named 'sft-plugin-qwn'. Did you mean 'sft-plugin-qwen'?" in result.output


def test_relative_dataset_files_resolve_against_the_plugin(run_cli, tmp_path, monkeypatch):
    folder = tmp_path / "acme"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "acme.jsonl").write_text(
        json.dumps({"instruction": "hi", "output": "hello"}) + "\n")
    path = plugin(folder, """
        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(name="acme-data", files=("data/acme.jsonl",)))
        """)
    monkeypatch.chdir(tmp_path)  # not the plugin's folder
    result = run_cli("--plugin", path, "datasets", "--json")
    files = next(d["files"] for d in json.loads(result.stdout) if d["name"] == "acme-data")
    assert files == [str(folder / "data" / "acme.jsonl")]
    assert run_cli("plugins", "check", "--plugin", path).exit_code == 0


RUN_TIME = {
    "template": ("""
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="phi-3",
                               hub_ids={"huggingface": "acme/acme"}))
        """, ("template", "render", "--model-type", "acme", "--messages", "{tmp}/m.json"),
        "model type 'acme' of plugin {path} has template='phi-3'", "--template)"),
    "format": ("""
        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(name="acme-data", files=(__file__,), format="alpacca"))
        """, ("datasets", "preview", "acme-data", "--template", "chatml"),
        "dataset 'acme-data' of plugin {path} has format='alpacca'", "(--dataset-format)"),
    "hub": ("""
        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(name="acme-data", hub_ids={"hugginface": "acme/data"}))
        """, ("datasets", "preview", "acme-data", "--template", "chatml"),
        "dataset 'acme-data' of plugin {path} has hub_ids={{'hugginface': 'acme/data'}}",
        "(--hub)"),
    "file": ("""
        @hookimpl
        def register_datasets(register):
            register(DatasetSpec(name="acme-data", files=("acme.jsonl",)))
        """, ("datasets", "preview", "acme-data", "--template", "chatml"),
        "Dataset 'acme-data' of plugin {path}", "Check the path given to --dataset"),
}


@pytest.mark.parametrize("field", RUN_TIME)
def test_run_time_errors_blame_the_plugin_not_a_flag(field, run_cli, tmp_path):
    body, command, blamed, not_said = RUN_TIME[field]
    path = plugin(tmp_path, body)
    (tmp_path / "m.json").write_text('[{"role": "user", "content": "hi"}]')
    result = run_cli("--plugin", path, *(part.format(tmp=tmp_path) for part in command))
    assert result.exit_code == 1
    assert blamed.format(path=path) in result.output
    assert not_said not in result.output
    assert "Fix the plugin" in result.output


def test_listings_show_what_a_plugin_registered(run_cli, tmp_path):
    path = plugin(tmp_path, """
        __version__ = "1.2.3"

        @hookimpl
        def register_templates(register):
            register(TemplateSpec(name="acme", jinja="{% for m in messages %}{{ m.content }}"
                                  "{% if tools %}{{ tools }}{% endif %}<end>{% endfor %}",
                                  assistant_suffix="<end>", stop_words=("<user>",)))

        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="acme",
                               hub_ids={"huggingface": "acme/acme"}, requires=("acme_lib",),
                               lora_target_modules=("q_proj",), config_model_types=("acme",),
                               requires_remote_code=True))
        """)
    models = json.loads(run_cli("--plugin", path, "models", "--json").stdout)
    model = next(m for m in models if m["model_type"] == "acme")
    assert (model["lora_target_modules"], model["config_model_types"], model["requires"],
            model["requires_remote_code"]) == (["q_proj"], ["acme"], ["acme_lib"], True)
    templates = json.loads(run_cli("--plugin", path, "templates", "--json").stdout)
    template = next(t for t in templates if t["name"] == "acme")
    assert (template["stop_words"], template["tools"], template["reasoning"]) == (
        ["<end>", "<user>"], True, False)
    chatml = next(t for t in templates if t["name"] == "chatml")
    assert (chatml["tools"], chatml["reasoning"]) == (False, False)
    plugins = json.loads(run_cli("--plugin", path, "plugins", "--json").stdout)
    assert next(p for p in plugins if p["name"] == str(path))["version"] == "1.2.3"


def test_plugin_package_folder_with_relative_imports(run_cli, tmp_path):
    package = tmp_path / "sft_plugin_acme"
    package.mkdir()
    (package / "specs.py").write_text(
        "from sdk.specs import TemplateSpec\nACME = TemplateSpec(name='acme')\n")
    (package / "__init__.py").write_text(
        "from sdk import hookimpl\nfrom .specs import ACME\n__version__ = '0.1'\n\n"
        "@hookimpl\ndef register_templates(register):\n    register(ACME)\n")
    result = run_cli("--plugin", package, "plugins", "check", str(package))
    assert result.exit_code == 0, result.output
    plugins = json.loads(run_cli("--plugin", package, "plugins", "--json").stdout)
    row = next(p for p in plugins if p["name"] == str(package))
    assert (row["version"], row["registered"], row["error"]) == (
        "0.1", {"templates": ["acme"]}, None)


def test_no_third_party_plugins_leaves_out_outside_plugins(run_cli, tmp_path, monkeypatch):
    # an installed third-party distribution (its dist-info on sys.path) and an env var file
    (tmp_path / "acme_ep.py").write_text(
        "from sdk import hookimpl\nfrom sdk.specs import TemplateSpec\n\n@hookimpl\n"
        "def register_templates(register):\n    register(TemplateSpec(name='acme-ep'))\n")
    info = tmp_path / "acme_ep-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-ep\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sft_sdk]\nacme = acme_ep\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env_file = plugin(tmp_path, """
        @hookimpl
        def register_templates(register):
            register(TemplateSpec(name="acme-env"))
        """)
    monkeypatch.setenv("SFT_SDK_PLUGINS", str(env_file))

    def names(*flags):
        return {t["name"] for t in json.loads(run_cli(*flags, "templates", "--json").stdout)}

    assert {"acme-ep", "acme-env", "chatml", "qwen2.5"} <= names()
    without = names("--no-third-party-plugins")
    assert {"chatml", "qwen2.5"} <= without and not {"acme-ep", "acme-env"} & without
    monkeypatch.setenv("SFT_SDK_NO_THIRD_PARTY_PLUGINS", "1")
    assert names() == without


def test_model_hub_ids_on_no_registered_hub_blame_the_plugin(run_cli, tmp_path):
    path = plugin(tmp_path, """
        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="acme", family="acme", template="chatml",
                               hub_ids={"hugginface": "acme/acme"}))
        """)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instruction": "hi", "output": "hello"}) + "\n")
    result = run_cli("--plugin", path, "datasets", "preview", data, "--model-type", "acme")
    assert result.exit_code == 1
    assert (f"Its hub_ids name 'hugginface', which no plugin registers as a hub: fix plugin "
            f"{path} ({path}:8).") in result.output
