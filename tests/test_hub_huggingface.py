"""The `huggingface` hub against a fake Hub server (fake_hubs/huggingface.py): what it alone
does (repo types, a hub that does not answer, offline mode, the cache when the hub is down).
What it does as the `modelscope` hub does is tested in test_hub_common.py."""

import pytest
from hub_testing import MODEL_FILES, model_folder
from huggingface_hub import constants

from sdk.errors import HubUnavailable, SdkError
from sdk.hubs.huggingface import download, push


def test_registered_with_its_token_variable(plugin_set):
    hub = plugin_set.registry.get("hubs", "huggingface")
    assert hub.token_env == "HF_TOKEN" and hub.download is download and hub.push is push


def test_download_refuses_a_repo_type_it_cannot_download(hf_hub_server):
    with pytest.raises(SdkError, match="repo type 'space'"):
        download("org/tiny", repo_type="space", endpoint=hf_hub_server.url)


def test_download_asks_for_the_main_branch(hf_hub_server):
    hf_hub_server.add_repo("org/tiny", MODEL_FILES)
    hf_hub_server.add_repo("org/tiny", {"train.jsonl": b"{}\n"}, repo_type="dataset")
    download("org/tiny", endpoint=hf_hub_server.url)
    download("org/tiny", repo_type="dataset", endpoint=hf_hub_server.url)
    assert ("GET", "/api/models/org/tiny/revision/main") in hf_hub_server.requests
    assert ("GET", "/api/datasets/org/tiny/revision/main") in hf_hub_server.requests


def test_a_hub_that_does_not_answer_is_unavailable(hf_hub_server, tmp_path):
    from fake_hubs.huggingface import FakeHuggingFaceHub

    with FakeHuggingFaceHub() as gone:
        pass  # stopped: its port refuses connections
    with pytest.raises(HubUnavailable, match="ConnectError"):
        download("org/tiny", endpoint=gone.url)
    with pytest.raises(HubUnavailable, match="ConnectError"):
        push(model_folder(tmp_path), "fake-user/x", token=gone.token, endpoint=gone.url)


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
