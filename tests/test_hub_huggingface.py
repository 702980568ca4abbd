"""The `huggingface` hub against a fake Hub server (fake_hubs/huggingface.py): downloads, pushes,
tokens, missing repos, server errors, timeouts, offline mode, and `sdk infer` from the hub."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from huggingface_hub import constants

from sdk.errors import HubUnavailable, SdkError
from sdk.hubs.huggingface import download, push

MODEL_FILES = {"config.json": b'{"a": 1}', "weights/model.bin": b"\0" * 64,
               "README.md": b"# tiny", "tokenizer/vocab.txt": b"a\nb\n"}


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def in_cache(path: Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(constants.HF_HUB_CACHE).resolve())


def test_registered_with_its_token_variable(plugin_set):
    hub = plugin_set.registry.get("hubs", "huggingface")
    assert hub.token_env == "HF_TOKEN" and hub.download is download and hub.push is push


def test_download_model_repo_without_ignored_files(hf_hub_server):
    hf_hub_server.add_repo("org/tiny", MODEL_FILES)
    folder = download("org/tiny", ignore_patterns=("*.bin", "*.md"), endpoint=hf_hub_server.url)
    assert in_cache(folder)
    assert files_in(folder) == {"config.json": b'{"a": 1}', "tokenizer/vocab.txt": b"a\nb\n"}


def test_download_dataset_repo(hf_hub_server):
    hf_hub_server.add_repo("org/tiny", MODEL_FILES)  # a model of the same name is another repo
    hf_hub_server.add_repo("org/tiny", {"train.jsonl": b'{"q": 1}\n', "README.md": b"card"},
                           repo_type="dataset")
    folder = download("org/tiny", ignore_patterns=["*.md"], repo_type="dataset",
                      endpoint=hf_hub_server.url)
    assert files_in(folder) == {"train.jsonl": b'{"q": 1}\n'}
    assert ("GET", "/api/datasets/org/tiny/revision/main") in hf_hub_server.requests
    with pytest.raises(SdkError, match="repo type 'space'"):
        download("org/tiny", repo_type="space", endpoint=hf_hub_server.url)


def test_download_a_revision(hf_hub_server):
    repo = hf_hub_server.add_repo("org/tiny", {"config.json": b"old"})
    first = repo.head
    repo.commit({"config.json": b"new"})
    assert files_in(download("org/tiny", endpoint=hf_hub_server.url)) == {"config.json": b"new"}
    old = download("org/tiny", revision=first, endpoint=hf_hub_server.url)
    assert files_in(old) == {"config.json": b"old"}
    with pytest.raises(SdkError, match="'org/tiny' \\(revision 'v9'\\).*no such revision"):
        download("org/tiny", revision="v9", endpoint=hf_hub_server.url)


def test_private_repo_needs_the_token(hf_hub_server, monkeypatch):
    hf_hub_server.add_repo("org/secret", {"config.json": b"{}"}, private=True)
    with pytest.raises(SdkError) as caught:
        download("org/secret", endpoint=hf_hub_server.url)
    assert "'org/secret'" in str(caught.value) and "none was given" in str(caught.value)
    assert not isinstance(caught.value, HubUnavailable)
    folder = download("org/secret", token=hf_hub_server.token, endpoint=hf_hub_server.url)
    assert files_in(folder) == {"config.json": b"{}"}
    monkeypatch.setenv("HF_TOKEN", hf_hub_server.token)  # the hub's token_env, read per call
    assert download("org/secret", endpoint=hf_hub_server.url) == folder


def test_push_creates_a_private_repo_with_all_but_ignored_files(hf_hub_server, tmp_path):
    folder = tmp_path / "checkpoint"
    (folder / "sub").mkdir(parents=True)
    for name, data in {"model.safetensors": b"w" * 1000, "sub/tokenizer.json": b"{}",
                       "optimizer.pt": b"state", "notes.tmp": b"x"}.items():
        (folder / name).write_bytes(data)
    url = push(folder, "fake-user/tuned", token=hf_hub_server.token,
               ignore_patterns=("optimizer.pt", "*.tmp"), endpoint=hf_hub_server.url)
    assert url == f"{hf_hub_server.url}/fake-user/tuned"
    repo = hf_hub_server.repos[("model", "fake-user/tuned")]
    assert repo.private
    assert repo.files == {"model.safetensors": b"w" * 1000, "sub/tokenizer.json": b"{}"}

    (folder / "model.safetensors").write_bytes(b"v" * 1000)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# Tuned\n")
    assert push(folder, "fake-user/tuned", token=hf_hub_server.token, private=False,
                ignore_patterns=("optimizer.pt", "*.tmp"), commit_message="Step 2",
                endpoint=hf_hub_server.url) == url
    assert repo.files["model.safetensors"] == b"v" * 1000 and "README.md" in repo.files
    assert repo.private  # an existing repository keeps its visibility
    downloaded = download("fake-user/tuned", token=hf_hub_server.token,
                          endpoint=hf_hub_server.url)
    assert files_in(downloaded) == repo.files


def test_push_public_repo(hf_hub_server, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    push(tmp_path, "fake-user/open", private=False, token=hf_hub_server.token,
         endpoint=hf_hub_server.url)
    assert not hf_hub_server.repos[("model", "fake-user/open")].private
    assert files_in(download("fake-user/open", endpoint=hf_hub_server.url)) == {
        "config.json": b"{}"}  # anonymous


def test_push_of_a_missing_folder(hf_hub_server, tmp_path):
    with pytest.raises(SdkError, match="not a folder"):
        push(tmp_path / "nothing", "fake-user/x", endpoint=hf_hub_server.url)


@pytest.mark.parametrize("token", ["hf_WrongToken000", None], ids=["wrong token", "no token"])
def test_refused_token_says_what_to_do_and_hides_the_token(hf_hub_server, tmp_path, token):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SdkError) as caught:
        push(tmp_path, "fake-user/new", token=token, endpoint=hf_hub_server.url)
    message = str(caught.value)
    assert not isinstance(caught.value, HubUnavailable)
    assert all(hint in message for hint in ("HF_TOKEN", "hf auth login", "--hub-token"))
    assert ("refused the token" if token else "none was given") in message
    assert "401" in message and "'fake-user/new'" in message
    assert ("model", "fake-user/new") not in hf_hub_server.repos
    if token:
        assert token not in message
        hf_hub_server.add_repo("org/public", {"config.json": b"{}"})
        with pytest.raises(SdkError, match="refused the token") as caught:
            download("org/public", token=token, endpoint=hf_hub_server.url)
        assert token not in str(caught.value)


def test_forbidden_token_is_not_shown(hf_hub_server, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    hf_hub_server.fail_next(1, status=403, path_contains="/api/repos/create")
    with pytest.raises(SdkError, match="refused the token.*write access") as caught:
        push(tmp_path, "fake-user/x", token=hf_hub_server.token, endpoint=hf_hub_server.url)
    assert hf_hub_server.token not in str(caught.value)


def test_missing_repo_names_repo_and_revision(hf_hub_server):
    with pytest.raises(SdkError) as caught:
        download("org/missing", revision="v1", token=hf_hub_server.token,
                 endpoint=hf_hub_server.url)
    assert "'org/missing' (revision 'v1')" in str(caught.value)
    assert "repository not found" in str(caught.value)
    assert not isinstance(caught.value, HubUnavailable)


def test_server_errors_are_hub_unavailable(hf_hub_server, tmp_path):
    hf_hub_server.add_repo("org/tiny", MODEL_FILES)
    hf_hub_server.fail_next(1, status=500)
    with pytest.raises(HubUnavailable, match="HTTP 500"):
        download("org/tiny", endpoint=hf_hub_server.url)
    hf_hub_server.fail_next(1, status=502, path_contains="/api/repos/create")
    with pytest.raises(HubUnavailable, match="502"):
        push(tmp_path, "fake-user/x", token=hf_hub_server.token, endpoint=hf_hub_server.url)
    assert files_in(download("org/tiny", endpoint=hf_hub_server.url)) == MODEL_FILES


def test_a_hub_that_does_not_answer_is_unavailable(hf_hub_server, tmp_path):
    from fake_hubs.huggingface import FakeHuggingFaceHub

    with FakeHuggingFaceHub() as gone:
        pass  # stopped: its port refuses connections
    with pytest.raises(HubUnavailable, match="ConnectError"):
        download("org/tiny", endpoint=gone.url)
    with pytest.raises(HubUnavailable, match="ConnectError"):
        push(tmp_path, "fake-user/x", token=gone.token, endpoint=gone.url)


def test_a_stalled_hub_times_out(hf_hub_server, tmp_path, monkeypatch):
    monkeypatch.setattr(constants, "HF_HUB_DOWNLOAD_TIMEOUT", 1)  # HF_HUB_DOWNLOAD_TIMEOUT=1
    hf_hub_server.add_repo("org/tiny", MODEL_FILES)
    for path, call in [
        ("/api/models/org/tiny", lambda: download("org/tiny", endpoint=hf_hub_server.url)),
        ("/api/repos/create", lambda: push(tmp_path, "fake-user/x", token=hf_hub_server.token,
                                           endpoint=hf_hub_server.url)),
    ]:
        hf_hub_server.fail_next(1, delay=30, path_contains=path)
        started = time.monotonic()
        with pytest.raises(HubUnavailable, match="HF_HUB_DOWNLOAD_TIMEOUT"):
            call()
        assert time.monotonic() - started < 10


def test_offline_mode_uses_the_cache_and_says_when_it_cannot(hf_hub_server, monkeypatch):
    hf_hub_server.add_repo("org/tiny", MODEL_FILES)
    hf_hub_server.add_repo("org/other", MODEL_FILES)
    online = download("org/tiny", ignore_patterns=["*.bin"], endpoint=hf_hub_server.url)
    asked = len(hf_hub_server.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what the variable sets at import
    assert download("org/tiny", ignore_patterns=["*.bin"], endpoint=hf_hub_server.url) == online
    with pytest.raises(SdkError, match="'org/other'.*not in the cache.*HF_HUB_OFFLINE=1"):
        download("org/other", endpoint=hf_hub_server.url)
    assert len(hf_hub_server.requests) == asked


def test_a_hub_that_is_down_falls_back_to_the_cache(hf_hub_server):
    hf_hub_server.add_repo("org/tiny", MODEL_FILES)
    online = download("org/tiny", endpoint=hf_hub_server.url)
    hf_hub_server.fail_next(1, status=500)
    assert download("org/tiny", endpoint=hf_hub_server.url) == online


@pytest.mark.slow  # a process that imports torch and transformers
def test_sdk_infer_downloads_a_model_type_from_the_hub(hf_hub_server, tiny_model_dir, tmp_path):
    hf_hub_server.add_repo("org/tiny", files_in(tiny_model_dir))
    plugin = tmp_path / "hub_model.py"
    plugin.write_text(textwrap.dedent("""
        from sdk import hookimpl
        from sdk.specs import ModelSpec

        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type="tiny-hub-chat", family="tiny", template="chatml",
                               hub_ids={"huggingface": "org/tiny"}))
    """))
    sdk = Path(sys.executable).with_name("sdk")
    # HF_HOME and the other settings of the hf_hub_server fixture are in the environment too.
    result = subprocess.run(
        [sdk, "--plugin", plugin, "infer", "--model-type", "tiny-hub-chat", "--hub",
         "huggingface", "--query", "hi", "--max-new-tokens", "3"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_ENDPOINT": hf_hub_server.url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert ("GET", "/api/models/org/tiny/revision/main") in hf_hub_server.requests
    fetched = {path.rsplit("/", 1)[-1] for method, path in hf_hub_server.requests
               if method == "GET" and "/resolve/" in path}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= fetched
    assert (Path(constants.HF_HUB_CACHE) / "models--org--tiny").is_dir()
