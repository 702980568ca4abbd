"""The `modelscope` hub against a fake ModelScope server (fake_hubs/modelscope.py): what it
alone does (its branch "master", the cache, `modelscope login`, git-LFS uploads). What it does as
the `huggingface` hub does is tested in test_hub_common.py."""

import hashlib
import os
from pathlib import Path

from hub_testing import MODEL_FILES, files_in, model_folder

from sdk.hubs.modelscope import download, push
from sdk.plugins import load_plugins


def test_registered_with_its_token_variable():
    from modelscope_hub.config import ENV_TOKEN

    hub = load_plugins().registry.get("hubs", "modelscope")
    assert hub.token_env == ENV_TOKEN == "MODELSCOPE_API_TOKEN"
    assert hub.download is download and hub.push is push


def test_a_second_download_takes_the_files_from_the_cache(ms_hub_server):
    ms_hub_server.add_repo("org/tiny", MODEL_FILES)
    folder = download("org/tiny", ignore_patterns=("*.bin", "*.md"), endpoint=ms_hub_server.url)
    # "main", the contract's default branch, is ModelScope's "master"
    listing = ("GET", "/api/v1/models/org/tiny/repo/files?Revision=master&Recursive=True")
    assert listing in ms_hub_server.requests
    asked = len(ms_hub_server.requests)
    assert download("org/tiny", ignore_patterns=("*.bin", "*.md"),
                    endpoint=ms_hub_server.url) == folder
    assert ms_hub_server.requests[asked:] == [listing]


def test_the_login_of_modelscope_login_is_used(ms_hub_server):
    from modelscope_hub import HubApi, HubConfig

    ms_hub_server.add_repo("org/secret", {"config.json": b"{}"}, private=True)
    # what `modelscope login --token T --endpoint URL` does, without its slow start
    user = HubApi(config=HubConfig(endpoint=ms_hub_server.url)).login(ms_hub_server.token)
    assert user.username == ms_hub_server.user
    assert (Path(os.environ["MODELSCOPE_HOME"]) / "credentials" / "cookies").is_file()
    assert files_in(download("org/secret", endpoint=ms_hub_server.url)) == {"config.json": b"{}"}


def test_weights_are_pushed_through_git_lfs(ms_hub_server, tmp_path):
    """As on ModelScope: the weights go to the LFS storage, the commit names them."""
    folder = model_folder(tmp_path)
    (folder / "model.safetensors").write_bytes(b"w" * 1000)
    push(folder, "fake-user/tuned", token=ms_hub_server.token, endpoint=ms_hub_server.url)
    assert any(method == "PUT" and path.startswith("/lfs/")
               for method, path in ms_hub_server.requests)
    assert ms_hub_server.blobs[hashlib.sha256(b"w" * 1000).hexdigest()] == b"w" * 1000
    assert ms_hub_server.repos[("model", "fake-user/tuned")].files == {
        "config.json": b"{}", "model.safetensors": b"w" * 1000}
