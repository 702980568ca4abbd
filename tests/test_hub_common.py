"""What the `huggingface` and `modelscope` hubs do alike, each against its fake server
(fake_hubs/): downloads, pushes, tokens, missing repos, server errors, timeouts, and `sdk infer`
from the hub. Each test runs once per hub; what one hub alone does is tested in
test_hub_huggingface.py and test_hub_modelscope.py."""

import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hub_testing import MODEL_FILES, files_in, model_folder
from huggingface_hub import constants

from sdk.errors import HubUnavailable, SdkError
from sdk.hubs import huggingface, modelscope


@dataclass(frozen=True)
class Hub:
    """A hub as these tests see it: its module, the fixture of its fake server, the variables
    it reads, the words of its messages and the paths of its requests (or a part of them)."""

    name: str
    module: ModuleType
    server_fixture: str
    token_env: str
    endpoint_env: str
    cache_env: str
    cached_model: str  # model org/tiny's folder in the cache
    hints: tuple[str, ...]  # where a message says a token can come from
    no_token: str  # what a message says when no token was given
    refused: str  # ... when the hub refused it
    missing_repo: str  # ... when a repository does not exist
    missing_revision: str  # ... when a revision does not
    timed_out: str  # ... when the hub did not answer in time
    listing: str  # the path of the request that lists model org/tiny's files
    file: str | None  # one that downloads its config.json; None: the client retries it
    create: str  # one that creates a model repo
    dataset: str  # where the requests about dataset org/tiny begin
    server: Any = None  # the started fake server, once the `remote` fixture has one

    def download(self, repo_id: str, **options: Any) -> Path:
        return self.module.download(repo_id, endpoint=self.server.url, **options)

    def push(self, folder: Path, repo_id: str, **options: Any) -> str:
        return self.module.push(folder, repo_id, endpoint=self.server.url, **options)

    def outages(self) -> list[tuple[str, str]]:
        """The (action, request) whose failure the client does not retry."""
        return [("download", self.listing), *([("download", self.file)] if self.file else []),
                ("push", self.create)]


HUBS = [
    Hub(name="huggingface", module=huggingface, server_fixture="hf_hub_server",
        token_env="HF_TOKEN", endpoint_env="HF_ENDPOINT", cache_env="HF_HUB_CACHE",
        cached_model="models--org--tiny", hints=("HF_TOKEN", "hf auth login", "--hub-token"),
        no_token="none was given", refused="refused the token",
        missing_repo="'{repo}' (revision '{revision}'): repository not found",
        missing_revision="'{repo}' (revision '{revision}'): the repository has no such revision",
        timed_out="HF_HUB_DOWNLOAD_TIMEOUT", listing="/api/models/org/tiny/revision/main",
        file=None, create="/api/repos/create", dataset="/api/datasets/org/tiny/"),
    Hub(name="modelscope", module=modelscope, server_fixture="ms_hub_server",
        token_env="MODELSCOPE_API_TOKEN", endpoint_env="MODELSCOPE_ENDPOINT",
        cache_env="MODELSCOPE_CACHE", cached_model="models/org--tiny",
        hints=("MODELSCOPE_API_TOKEN", "modelscope login", "--hub-token"),
        no_token="without a token", refused="the token was refused",
        missing_repo="'{repo}' at revision '{revision}' was not found",
        missing_revision="'{repo}' at revision '{revision}' was not found", timed_out="timed out",
        listing="/api/v1/models/org/tiny/repo/files?Revision=master&Recursive=True",
        file="FilePath=config.json", create="/api/v1/models",
        dataset="/api/v1/datasets/org/tiny/repo/tree?"),
]


def attempt(remote: Hub, action: str, folder: Path) -> None:
    """Download model org/tiny, or push ``folder`` to fake-user/x."""
    if action == "download":
        remote.download("org/tiny")
    else:
        remote.push(folder, "fake-user/x", token=remote.server.token)


@pytest.fixture(params=HUBS, ids=[hub.name for hub in HUBS])
def remote(request) -> Hub:
    """Each hub with its fake server started (and the hub library isolated by its fixture)."""
    return replace(request.param, server=request.getfixturevalue(request.param.server_fixture))


def test_download_model_repo_without_ignored_files(remote):
    remote.server.add_repo("org/tiny", MODEL_FILES)
    folder = remote.download("org/tiny", ignore_patterns=("*.bin", "*.md"))
    assert folder.resolve().is_relative_to(Path(os.environ[remote.cache_env]).resolve())
    assert files_in(folder) == {"config.json": b'{"a": 1}', "tokenizer/vocab.txt": b"a\nb\n"}
    assert remote.server.fetched_files() == {"config.json", "tokenizer/vocab.txt"}


def test_download_dataset_repo(remote):
    remote.server.add_repo("org/tiny", MODEL_FILES)  # a model of the same name is another repo
    remote.server.add_repo("org/tiny", {"train.jsonl": b'{"q": 1}\n', "README.md": b"card",
                                        "data/test.jsonl": b'{"q": 2}\n'}, repo_type="dataset")
    folder = remote.download("org/tiny", ignore_patterns=["*.md"], repo_type="dataset")
    assert files_in(folder) == {"train.jsonl": b'{"q": 1}\n', "data/test.jsonl": b'{"q": 2}\n'}
    assert any(path.startswith(remote.dataset) for _, path in remote.server.requests)


def test_download_a_revision(remote):
    repo = remote.server.add_repo("org/tiny", {"config.json": b"old"})
    first = repo.head
    repo.commit({"config.json": b"new"})
    assert files_in(remote.download("org/tiny")) == {"config.json": b"new"}
    assert files_in(remote.download("org/tiny", revision=first)) == {"config.json": b"old"}


def test_missing_repo_or_revision_names_both(remote):
    remote.server.add_repo("org/tiny", MODEL_FILES)
    for repo_id, revision, says in [("org/missing", "v1", remote.missing_repo),
                                    ("org/tiny", "v9", remote.missing_revision)]:
        with pytest.raises(SdkError) as caught:
            remote.download(repo_id, revision=revision, token=remote.server.token)
        assert says.format(repo=repo_id, revision=revision) in str(caught.value)
        assert not isinstance(caught.value, HubUnavailable)


def test_private_repo_needs_the_token(remote, monkeypatch):
    remote.server.add_repo("org/secret", {"config.json": b"{}"}, private=True)
    with pytest.raises(SdkError) as caught:
        remote.download("org/secret")
    message = str(caught.value)
    assert "'org/secret'" in message and remote.no_token in message
    assert all(hint in message for hint in remote.hints)
    assert not isinstance(caught.value, HubUnavailable)
    folder = remote.download("org/secret", token=remote.server.token)
    assert files_in(folder) == {"config.json": b"{}"}
    monkeypatch.setenv(remote.token_env, remote.server.token)  # read at each call
    assert remote.download("org/secret") == folder


def test_push_creates_a_private_repo_with_all_but_ignored_files(remote, tmp_path):
    server = remote.server
    folder = tmp_path / "checkpoint"
    (folder / "sub").mkdir(parents=True)
    checkpoint = {"model.safetensors": b"w" * 1000, "sub/tokenizer.json": b"{}",
                  "config.json": b"{}", "optimizer.pt": b"state", "notes.tmp": b"x"}
    for name, data in checkpoint.items():
        (folder / name).write_bytes(data)
    ignored = ("optimizer.pt", "*.tmp")
    url = remote.push(folder, "fake-user/tuned", token=server.token, ignore_patterns=ignored)
    assert url == server.repo_url("model", "fake-user/tuned")
    repo = server.repos[("model", "fake-user/tuned")]
    assert repo.private
    assert repo.files == {"model.safetensors": b"w" * 1000, "sub/tokenizer.json": b"{}",
                          "config.json": b"{}"}
    assert files_in(folder) == checkpoint  # nothing of the hub library's is left in the folder

    commits = len(repo.commits)
    (folder / "model.safetensors").write_bytes(b"v" * 1000)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# Tuned\n")
    assert remote.push(folder, "fake-user/tuned", token=server.token, private=False,
                       ignore_patterns=ignored, commit_message="Step 2") == url
    assert len(repo.commits) == commits + 1
    assert repo.files["model.safetensors"] == b"v" * 1000 and "README.md" in repo.files
    assert repo.private  # an existing repository keeps its visibility
    assert files_in(remote.download("fake-user/tuned", token=server.token)) == repo.files


def test_push_public_repo(remote, tmp_path):
    remote.push(model_folder(tmp_path), "fake-user/open", private=False,
                token=remote.server.token)
    assert not remote.server.repos[("model", "fake-user/open")].private
    assert files_in(remote.download("fake-user/open")) == {"config.json": b"{}"}  # anonymous


def test_push_of_a_missing_folder(remote, tmp_path):
    with pytest.raises(SdkError, match="not a folder"):
        remote.push(tmp_path / "nothing", "fake-user/x")


@pytest.mark.parametrize("token", ["WrongToken000", None], ids=["wrong token", "no token"])
def test_refused_token_says_what_to_do_and_hides_the_token(remote, tmp_path, token):
    with pytest.raises(SdkError) as caught:
        remote.push(model_folder(tmp_path), "fake-user/new", token=token)
    message = str(caught.value)
    assert not isinstance(caught.value, HubUnavailable)
    assert all(hint in message for hint in remote.hints)
    assert (remote.refused if token else remote.no_token) in message
    assert "401" in message and "'fake-user/new'" in message
    assert ("model", "fake-user/new") not in remote.server.repos
    if token:
        assert token not in message
        remote.server.add_repo("org/public", {"config.json": b"{}"})
        with pytest.raises(SdkError, match=remote.refused) as caught:
            remote.download("org/public", token=token)
        assert token not in str(caught.value)


@pytest.mark.parametrize("step", ["create", "commit"])
def test_a_forbidden_push_asks_for_write_access_and_hides_the_token(remote, tmp_path, step):
    """Refused when the repo is created, or at the commit, after the repo was: no outage."""
    path = remote.create if step == "create" else "/commit/"
    remote.server.fail_next(1, status=403, path_contains=path)
    with pytest.raises(SdkError, match=f"{remote.refused}.*403.*write access") as caught:
        remote.push(model_folder(tmp_path), "fake-user/x", token=remote.server.token)
    assert not isinstance(caught.value, HubUnavailable)
    assert remote.server.token not in str(caught.value)


def test_server_errors_are_hub_unavailable(remote, tmp_path):
    remote.server.add_repo("org/tiny", MODEL_FILES)
    folder = model_folder(tmp_path)
    for status, (action, path) in zip((500, 502, 503), remote.outages(), strict=False):
        remote.server.fail_next(1, status=status, path_contains=path)
        with pytest.raises(HubUnavailable, match=f"HTTP {status}"):
            attempt(remote, action, folder)
    assert files_in(remote.download("org/tiny")) == MODEL_FILES


def test_a_stalled_hub_times_out(remote, tmp_path, monkeypatch):
    """Within the client's timeout: HF_HUB_DOWNLOAD_TIMEOUT, set to 1 s here, and
    MODELSCOPE_*_TIMEOUT, which conftest sets to 2 s (fake_hubs.modelscope.GIVE_UP_QUICKLY)."""
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)  # HF_HUB_DOWNLOAD_TIMEOUT=1
    remote.server.add_repo("org/tiny", MODEL_FILES)
    folder = model_folder(tmp_path)
    for action, path in remote.outages():
        remote.server.fail_next(1, delay=30, path_contains=path)
        started = time.monotonic()
        with pytest.raises(HubUnavailable, match=remote.timed_out):
            attempt(remote, action, folder)
        assert time.monotonic() - started < 10


@pytest.mark.slow  # a process that imports torch and transformers
def test_sdk_infer_downloads_a_model_type_from_the_hub(remote, tiny_model_dir, tmp_path):
    remote.server.add_repo("org/tiny", files_in(tiny_model_dir))
    plugin = tmp_path / "hub_model.py"
    plugin.write_text(textwrap.dedent(f"""
        from sdk import hookimpl
        from sdk.specs import ModelSpec

        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="tiny-hub-chat", family="tiny", template="chatml",
                               hub_ids={{"{remote.name}": "org/tiny"}}))
    """))
    sdk = Path(sys.executable).with_name("sdk")
    # The hub library's home and cache (under tmp_path) come from its server's fixture.
    result = subprocess.run(
        [sdk, "--plugin", plugin, "infer", "--model-type", "tiny-hub-chat", "--hub", remote.name,
         "--query", "hi", "--max-new-tokens", "3"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, remote.endpoint_env: remote.server.url, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert ("GET", remote.listing) in remote.server.requests
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= remote.server.fetched_files()
    assert (Path(os.environ[remote.cache_env]) / remote.cached_model).is_dir()
