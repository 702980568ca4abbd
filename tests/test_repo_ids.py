"""One rule for Hugging Face / ModelScope repository ids (sdk/hubs/repo_id.py): the one
huggingface_hub applies, checked by `sdk push --repo-id` and `sdk sft --push-to-hub` before
anything is staged or trained, and deciding whether a --dataset is a hub dataset id. The
`local` hub's ids are paths and stay accepted."""

from __future__ import annotations

import json
import textwrap

import pytest
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from conftest import TINY_MODEL_TYPE
from sdk.config import SftArguments
from sdk.data.sources import dataset_source
from sdk.errors import SdkError
from sdk.hubs.push import push_destination
from sdk.hubs.repo_id import is_repo_id
from sdk.plugins import load_plugins

IDS = ["org/m", "Qwen/Qwen2.5-7B-Instruct", "AI-ModelScope/alpaca-gpt4-data-zh", "_a/b_",
       "1/2", "a.b/c-d_e", "a/b.gitx", "a/" + "x" * 96,
       "-a/b", "a-/b", ".a/b", "a./b", "a/b.git", "a/b--c", "a/b..c", "a/" + "x" * 97, "é/b",
       "a/b\n", "not a repo id"]
NOT_OWNER_NAME = ["a", "a/b/c", "/a/b", "a/", "/"]


@pytest.mark.parametrize("repo_id", IDS)
def test_the_rule_is_huggingface_hubs(repo_id):
    try:
        validate_repo_id(repo_id)
        valid = True
    except HFValidationError:
        valid = False
    assert is_repo_id(repo_id) == valid


@pytest.mark.parametrize("repo_id", NOT_OWNER_NAME)
def test_an_id_needs_an_owner_and_a_name(repo_id):
    assert not is_repo_id(repo_id)


@pytest.mark.parametrize("hub, repo_id", [("huggingface", "not a repo id"),
                                          ("modelscope", "-org/model"),
                                          ("huggingface", "org/model.git")])
def test_sdk_push_checks_the_repo_id_first(run_cli, tmp_path, hub, repo_id):
    # the checkpoint does not exist: the id is refused before the checkpoint is even looked at
    result = run_cli("push", "--hub", hub, "--ckpt-dir", tmp_path / "no-checkpoint",
                     "--repo-id", repo_id)
    assert result.exit_code == 1
    assert f"--repo-id '{repo_id}' is not a repository id on {hub}: give OWNER/NAME (" \
           in result.stderr
    assert "Traceback" not in result.output


def test_sdk_push_passes_a_good_id_and_a_local_path_on(run_cli, tmp_path):
    for hub, repo_id in (("huggingface", "org/model"), ("local", str(tmp_path / "repo"))):
        result = run_cli("push", "--hub", hub, "--ckpt-dir", tmp_path / "no-checkpoint",
                         "--repo-id", repo_id)
        assert result.exit_code == 1
        assert "is not a repository id" not in result.stderr
        assert "--ckpt-dir" in result.stderr  # refused for the missing checkpoint only


def test_sft_push_to_hub_checks_the_id_on_the_hub_it_pushes_to(tmp_path):
    registry = load_plugins().registry

    def destination(hub, repo_id):
        return push_destination(SftArguments(
            model_type=TINY_MODEL_TYPE, push_to_hub=True, hub=hub, hub_model_id=repo_id,
            hub_token="tok"), registry)

    with pytest.raises(SdkError, match=r"--hub-model-id 'org/a\.\.b' is not a repository id on "
                                       r"modelscope: give OWNER/NAME \("):
        destination("modelscope", "org/a..b")
    assert destination("huggingface", "org/a.b").repo_id == "org/a.b"
    local = str(tmp_path / "models" / "mine")  # the local hub's ids are folder paths
    assert destination("local", local).repo_id == local


def test_only_an_owner_name_id_is_read_as_a_hub_dataset(tmp_path):
    """`org/data` is downloaded from --hub; `org/data--x` is not a hub id, so an unknown name."""
    repos = tmp_path / "repos"
    (repos / "org" / "data").mkdir(parents=True)
    (repos / "org" / "data" / "train.jsonl").write_text(
        json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n")
    plugin = tmp_path / "folder_hub.py"
    plugin.write_text(textwrap.dedent(f"""
        from pathlib import Path
        from sdk import hookimpl
        from sdk.specs import Hub

        def download(repo_id, revision="main", ignore_patterns=(), **settings):
            return Path({str(repos)!r}) / repo_id

        @hookimpl
        def register_hubs(register):
            register(Hub("folders", download, download))
    """))
    registry = load_plugins([str(plugin)]).registry

    class Args:
        dataset_info = None
        dataset_path: list[str] = []
        hub = "folders"
        hub_token = None

    assert dataset_source("org/data", registry, Args()).files == (
        str(repos / "org" / "data" / "train.jsonl"),)
    with pytest.raises(SdkError, match="Unknown dataset 'org/data--x'"):
        dataset_source("org/data--x", registry, Args())
