"""The `modelscope` hub against a fake ModelScope server (fake_hubs/modelscope.py): downloads,
pushes, tokens (argument, MODELSCOPE_API_TOKEN, `modelscope login`), missing repos, server
errors, timeouts, and `sdk infer` from the hub."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sdk.errors import HubUnavailable, SdkError
from sdk.hubs.modelscope import download, push
from sdk.plugins import load_plugins

MODEL_FILES = {"config.json": b'{"a": 1}', "weights/model.bin": b"\0" * 64,
               "README.md": b"# tiny", "tokenizer/vocab.txt": b"a\nb\n"}
HINTS = ("MODELSCOPE_API_TOKEN", "modelscope login", "--hub-token")


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def model_folder(tmp_path: Path) -> Path:
    """A folder to push, beside the fixture's MODELSCOPE_HOME (also under tmp_path)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder


def fetched_files(server) -> set[str]:
    """The files downloaded from the server: a download names its file in the query."""
    return {path.split("FilePath=")[1].split("&")[0] for method, path in server.requests
            if method == "GET" and "FilePath=" in path}


def test_registered_with_its_token_variable():
    from modelscope_hub.config import ENV_TOKEN

    hub = load_plugins().registry.get("hubs", "modelscope")
    assert hub.token_env == ENV_TOKEN == "MODELSCOPE_API_TOKEN"
    assert hub.download is download and hub.push is push


def test_download_model_repo_without_ignored_files(ms_hub_server):
    ms_hub_server.add_repo("org/tiny", MODEL_FILES)
    folder = download("org/tiny", ignore_patterns=("*.bin", "*.md"), endpoint=ms_hub_server.url)
    assert folder.resolve().is_relative_to(Path(os.environ["MODELSCOPE_CACHE"]).resolve())
    assert files_in(folder) == {"config.json": b'{"a": 1}', "tokenizer/vocab.txt": b"a\nb\n"}
    assert fetched_files(ms_hub_server) == {"config.json", "tokenizer/vocab.txt"}
    # "main", the contract's default branch, is ModelScope's "master"
    listing = ("GET", "/api/v1/models/org/tiny/repo/files?Revision=master&Recursive=True")
    assert listing in ms_hub_server.requests
    asked = len(ms_hub_server.requests)
    assert download("org/tiny", ignore_patterns=("*.bin", "*.md"),
                    endpoint=ms_hub_server.url) == folder
    assert ms_hub_server.requests[asked:] == [listing]  # the files come from the cache


def test_download_dataset_repo(ms_hub_server):
    ms_hub_server.add_repo("org/tiny", MODEL_FILES)  # a model of the same name is another repo
    ms_hub_server.add_repo("org/tiny", {"train.jsonl": b'{"q": 1}\n', "README.md": b"card",
                                        "data/test.jsonl": b'{"q": 2}\n'}, repo_type="dataset")
    folder = download("org/tiny", ignore_patterns=["*.md"], repo_type="dataset",
                      endpoint=ms_hub_server.url)
    assert files_in(folder) == {"train.jsonl": b'{"q": 1}\n', "data/test.jsonl": b'{"q": 2}\n'}
    assert any(path.startswith("/api/v1/datasets/org/tiny/repo/tree?")
               for _, path in ms_hub_server.requests)


def test_download_a_revision(ms_hub_server):
    repo = ms_hub_server.add_repo("org/tiny", {"config.json": b"old"})
    first = repo.head
    repo.commit({"config.json": b"new"})
    assert files_in(download("org/tiny", endpoint=ms_hub_server.url)) == {"config.json": b"new"}
    old = download("org/tiny", revision=first, endpoint=ms_hub_server.url)
    assert files_in(old) == {"config.json": b"old"}


def test_missing_repo_or_revision_names_both(ms_hub_server):
    ms_hub_server.add_repo("org/tiny", MODEL_FILES)
    for repo_id, revision in [("org/missing", "v1"), ("org/tiny", "v9")]:
        with pytest.raises(SdkError) as caught:
            download(repo_id, revision=revision, token=ms_hub_server.token,
                     endpoint=ms_hub_server.url)
        message = str(caught.value)
        assert f"'{repo_id}' at revision '{revision}' was not found" in message, message
        assert not isinstance(caught.value, HubUnavailable)


def test_private_repo_needs_the_token(ms_hub_server, monkeypatch):
    ms_hub_server.add_repo("org/secret", {"config.json": b"{}"}, private=True)
    with pytest.raises(SdkError) as caught:
        download("org/secret", endpoint=ms_hub_server.url)
    message = str(caught.value)
    assert "'org/secret'" in message and "without a token" in message
    assert all(hint in message for hint in HINTS)
    assert not isinstance(caught.value, HubUnavailable)
    folder = download("org/secret", token=ms_hub_server.token, endpoint=ms_hub_server.url)
    assert files_in(folder) == {"config.json": b"{}"}
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", ms_hub_server.token)  # read at each call
    assert download("org/secret", endpoint=ms_hub_server.url) == folder


def test_the_login_of_modelscope_login_is_used(ms_hub_server):
    from modelscope_hub import HubApi, HubConfig

    ms_hub_server.add_repo("org/secret", {"config.json": b"{}"}, private=True)
    # what `modelscope login --token T --endpoint URL` does, without its slow start
    user = HubApi(config=HubConfig(endpoint=ms_hub_server.url)).login(ms_hub_server.token)
    assert user.username == ms_hub_server.user
    assert (Path(os.environ["MODELSCOPE_HOME"]) / "credentials" / "cookies").is_file()
    assert files_in(download("org/secret", endpoint=ms_hub_server.url)) == {"config.json": b"{}"}


def test_push_creates_a_private_repo_with_all_but_ignored_files(ms_hub_server, tmp_path):
    folder = tmp_path / "checkpoint"
    (folder / "sub").mkdir(parents=True)
    checkpoint = {"model.safetensors": b"w" * 1000, "sub/tokenizer.json": b"{}",
                  "config.json": b"{}", "optimizer.pt": b"state", "notes.tmp": b"x"}
    for name, data in checkpoint.items():
        (folder / name).write_bytes(data)
    url = push(folder, "fake-user/tuned", token=ms_hub_server.token,
               ignore_patterns=("optimizer.pt", "*.tmp"), endpoint=ms_hub_server.url)
    assert url == f"{ms_hub_server.url}/models/fake-user/tuned"
    repo = ms_hub_server.repos[("model", "fake-user/tuned")]
    assert repo.private
    assert repo.files == {"model.safetensors": b"w" * 1000, "sub/tokenizer.json": b"{}",
                          "config.json": b"{}"}
    assert files_in(folder) == checkpoint  # nothing of modelscope's is left in the folder
    # the weights went through git-LFS, as on ModelScope
    assert any(method == "PUT" and path.startswith("/lfs/")
               for method, path in ms_hub_server.requests)

    (folder / "model.safetensors").write_bytes(b"v" * 1000)
    (folder / "README.md").write_text("# Tuned\n")
    assert push(folder, "fake-user/tuned", token=ms_hub_server.token, private=False,
                ignore_patterns=("optimizer.pt", "*.tmp"), commit_message="Step 2",
                endpoint=ms_hub_server.url) == url
    assert len(repo.commits) == 2
    assert repo.files["model.safetensors"] == b"v" * 1000 and "README.md" in repo.files
    assert repo.private  # an existing repository keeps its visibility
    downloaded = download("fake-user/tuned", token=ms_hub_server.token,
                          endpoint=ms_hub_server.url)
    assert files_in(downloaded) == repo.files


def test_push_public_repo(ms_hub_server, tmp_path):
    push(model_folder(tmp_path), "fake-user/open", private=False, token=ms_hub_server.token,
         endpoint=ms_hub_server.url)
    assert not ms_hub_server.repos[("model", "fake-user/open")].private
    assert files_in(download("fake-user/open", endpoint=ms_hub_server.url)) == {
        "config.json": b"{}"}  # anonymous


def test_push_of_a_missing_folder(ms_hub_server, tmp_path):
    with pytest.raises(SdkError, match="not a folder"):
        push(tmp_path / "nothing", "fake-user/x", endpoint=ms_hub_server.url)


@pytest.mark.parametrize("token", ["ms-WrongToken000", None], ids=["wrong token", "no token"])
def test_refused_token_says_what_to_do_and_hides_the_token(ms_hub_server, tmp_path, token):
    with pytest.raises(SdkError) as caught:
        push(model_folder(tmp_path), "fake-user/new", token=token, endpoint=ms_hub_server.url)
    message = str(caught.value)
    assert not isinstance(caught.value, HubUnavailable)
    assert all(hint in message for hint in HINTS)
    assert ("the token was refused" if token else "without a token") in message
    assert "401" in message and "'fake-user/new'" in message
    assert ("model", "fake-user/new") not in ms_hub_server.repos
    if token:
        assert token not in message
        ms_hub_server.add_repo("org/public", {"config.json": b"{}"})
        with pytest.raises(SdkError, match="the token was refused") as caught:
            download("org/public", token=token, endpoint=ms_hub_server.url)
        assert token not in str(caught.value)


def test_a_commit_refused_after_the_repo_was_created_is_no_outage(ms_hub_server, tmp_path):
    ms_hub_server.fail_next(1, status=403, path_contains="/commit/")
    with pytest.raises(SdkError, match="token was refused.*403.*write access") as caught:
        push(model_folder(tmp_path), "fake-user/x", token=ms_hub_server.token,
             endpoint=ms_hub_server.url)
    assert not isinstance(caught.value, HubUnavailable)
    assert ms_hub_server.token not in str(caught.value)


def test_server_errors_are_hub_unavailable(ms_hub_server, tmp_path):
    ms_hub_server.add_repo("org/tiny", MODEL_FILES)
    folder = model_folder(tmp_path)
    for status, path, call in [
        (500, "/repo/files", lambda: download("org/tiny", endpoint=ms_hub_server.url)),
        (502, "FilePath=config.json", lambda: download("org/tiny", endpoint=ms_hub_server.url)),
        (503, "/api/v1/models", lambda: push(folder, "fake-user/x", token=ms_hub_server.token,
                                             endpoint=ms_hub_server.url)),
    ]:
        ms_hub_server.fail_next(1, status=status, path_contains=path)
        with pytest.raises(HubUnavailable, match=f"HTTP {status}"):
            call()
    assert files_in(download("org/tiny", endpoint=ms_hub_server.url)) == MODEL_FILES


def test_a_stalled_hub_times_out(ms_hub_server, tmp_path):
    """Within MODELSCOPE_*_TIMEOUT, which conftest sets to 2 s (fake_hubs.GIVE_UP_QUICKLY)."""
    ms_hub_server.add_repo("org/tiny", MODEL_FILES)
    folder = model_folder(tmp_path)
    for path, call in [
        ("/repo/files", lambda: download("org/tiny", endpoint=ms_hub_server.url)),
        ("FilePath=README.md", lambda: download("org/tiny", endpoint=ms_hub_server.url)),
        ("/api/v1/models", lambda: push(folder, "fake-user/x", token=ms_hub_server.token,
                                        endpoint=ms_hub_server.url)),
    ]:
        ms_hub_server.fail_next(1, delay=30, path_contains=path)
        started = time.monotonic()
        with pytest.raises(HubUnavailable, match="timed out"):
            call()
        assert time.monotonic() - started < 10


@pytest.mark.slow
def test_sdk_infer_downloads_a_model_type_from_the_hub(ms_hub_server, tiny_model_dir, tmp_path):
    ms_hub_server.add_repo("org/tiny", files_in(tiny_model_dir))
    plugin = tmp_path / "hub_model.py"
    plugin.write_text(textwrap.dedent("""
        from sdk import hookimpl
        from sdk.specs import ModelSpec

        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="tiny-hub-chat", family="tiny", template="chatml",
                               hub_ids={"modelscope": "org/tiny"}))
    """))
    sdk = Path(sys.executable).with_name("sdk")
    # MODELSCOPE_HOME and MODELSCOPE_CACHE (under tmp_path) come from the ms_hub_server fixture
    result = subprocess.run(
        [sdk, "--plugin", plugin, "infer", "--model-type", "tiny-hub-chat", "--hub",
         "modelscope", "--query", "hi", "--max-new-tokens", "3"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "MODELSCOPE_ENDPOINT": ms_hub_server.url, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert ("GET", "/api/v1/models/org/tiny/repo/files?Revision=master&Recursive=True"
            ) in ms_hub_server.requests
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched_files(ms_hub_server)
    assert (Path(os.environ["MODELSCOPE_CACHE"]) / "models" / "org--tiny").is_dir()
