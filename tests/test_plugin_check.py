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


def test_template_whose_parts_lack_content_is_caught(run_cli, tmp_path):
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
