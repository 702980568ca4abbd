"""Pushing checkpoints to a hub: retries, a checkpoint left byte-identical, the model card,
tokens kept out of every message and file, each --push-hub-strategy, and round trips (push,
download, `sdk infer` answers as from the local checkpoint).

The `flaky` hub of HUB_PLUGIN keeps repositories in folders (through the local hub), records
every push and fails on demand, echoing the token in its errors as a careless library might.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import TINY_MODEL_TYPE, folder_digest, only_run
from sdk.errors import SdkError
from sdk.hubs.card import model_card
from sdk.hubs.push import TRAINING_STATE
from sdk.plugins import load_plugins
from sdk.testing import AnyTunerArguments
from sdk.train.sft import run_sft

MODEL_TYPE = "tiny-pushable"
TOKEN = "tok_S3cret_0123456789"
ENV_TOKEN = "tok_FromTheEnvironment_42"
HUB_PLUGIN = """
import json
import os
import threading
from pathlib import Path

from sdk import hookimpl
from sdk.errors import HubUnavailable, SdkError
from sdk.hubs import local
from sdk.specs import DatasetSpec, Hub, ModelSpec


def root():
    return Path(os.environ["FLAKY_HUB_DIR"])


def push(folder, repo_id, *, private=True, token=None, ignore_patterns=(), commit_message="",
         endpoint=None):
    token = token or os.environ.get("FLAKY_TOKEN")  # what a hub library does
    state = json.loads((root() / "state.json").read_text())
    files = sorted(str(p.relative_to(folder)) for p in Path(folder).rglob("*") if p.is_file())
    state["calls"].append({{"repo_id": repo_id, "private": private, "message": commit_message,
                           "files": files, "thread": threading.current_thread().name}})
    error = state["errors"].pop(0) if state["errors"] else None
    (root() / "state.json").write_text(json.dumps(state))
    if error == "unavailable":
        raise HubUnavailable(f"HTTP 503 from https://flaky.test/api?token={{token}}.")
    if error == "refused":
        raise SdkError(f"The hub refused the token {{token}}.")
    if error == "crash":
        raise RuntimeError(f"bug in the library, token={{token}}")
    return local.push(folder, str(root() / "repos" / repo_id))


def download(repo_id, revision="main", ignore_patterns=(), **options):
    return local.download(str(root() / "repos" / repo_id))


def load(spec, options):
    from sdk.models.loader import load_pretrained

    return load_pretrained(options.model_dir or {model_dir!r}, options)


@hookimpl
def register_hubs(register):
    register(Hub("flaky", download, push, "folders that fail on demand", token_env="FLAKY_TOKEN"))


@hookimpl
def register_models(register):
    register(ModelSpec(model_type={model_type!r}, family="tiny", template="chatml", loader=load,
                       hub_ids={{"flaky": "org/tiny-base", "huggingface": "org/tiny-base",
                                "modelscope": "org/tiny-base", "local": "/models/tiny-base"}}))


@hookimpl
def register_datasets(register):
    register(DatasetSpec("tiny-identity", files=({data!r},),
                         hub_ids={{"flaky": "org/identity-data"}}))
"""
IDENTITY = [("Who are you?", "I am Tiny, made by the tests."),
            ("What is your name?", "My name is Tiny."),
            ("Introduce yourself.", "I am Tiny, a small model."),
            ("Your name?", "Tiny.")]


def write_jsonl(path: Path, pairs) -> Path:
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n"
                            for q, a in pairs), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def hub_plugin(tiny_model_dir, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hub-plugin")
    data = write_jsonl(folder / "registered.jsonl", IDENTITY)
    path = folder / "flaky_hub.py"
    path.write_text(textwrap.dedent(HUB_PLUGIN.format(model_dir=str(tiny_model_dir),
                                                      model_type=MODEL_TYPE, data=str(data))))
    return path


@pytest.fixture(scope="module")
def registry(hub_plugin):
    return load_plugins([str(hub_plugin)]).registry


def train(registry, output_dir: Path, tiny_model_dir: Path, **overrides):
    """4 steps with a checkpoint every 2 and eval loss at each; from --model-id-or-path and a
    registered dataset plus a local file, so that the card has something not to leak."""
    local_data = write_jsonl(output_dir.parent / f"{output_dir.name}-local.jsonl", IDENTITY)
    settings = dict(model_type=MODEL_TYPE, model_id_or_path=str(tiny_model_dir),
                    dataset=["tiny-identity", str(local_data)], split_dataset_ratio=0.25,
                    output_dir=str(output_dir), max_steps=4, save_steps=2, batch_size=2,
                    gradient_accumulation_steps=1, learning_rate=1e-2, logging_steps=1, seed=0,
                    hub="flaky")
    return run_sft(AnyTunerArguments(**{**settings, **overrides}), registry)


@pytest.fixture(scope="module")
def trained(registry, tiny_model_dir, tmp_path_factory):
    """One run shared by the tests that only push it (and check that it stays untouched)."""
    return train(registry, tmp_path_factory.mktemp("shared-run") / "output", tiny_model_dir)


class FlakyHub:
    def __init__(self, root: Path):
        self.root = root
        (root / "state.json").write_text(json.dumps({"calls": [], "errors": []}))

    def fail_next(self, *errors: str) -> None:
        state = json.loads((self.root / "state.json").read_text())
        state["errors"] = list(errors)
        (self.root / "state.json").write_text(json.dumps(state))

    @property
    def calls(self) -> list[dict]:
        return json.loads((self.root / "state.json").read_text())["calls"]

    def repo(self, repo_id: str) -> Path:
        return self.root / "repos" / repo_id


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FlakyHub:
    monkeypatch.setenv("FLAKY_HUB_DIR", str(tmp_path / "flaky-hub"))
    monkeypatch.setattr("sdk.hubs.push.RETRY_DELAYS", (0.01, 0.02, 0.04))
    (tmp_path / "flaky-hub").mkdir()
    return FlakyHub(tmp_path / "flaky-hub")


def push_cli(run_cli, hub_plugin, *args):
    return run_cli("--plugin", hub_plugin, "push", "--hub", "flaky", *args)


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def resume_command(message: str) -> list[str]:
    """The `sdk push` command a failure message gives, as arguments after `sdk`."""
    words = shlex.split(message[message.index("sdk push "):].splitlines()[0])
    assert words[0] == "sdk"
    return words[1:]


def test_a_push_is_tried_again_while_the_hub_is_unavailable(trained, hub, hub_plugin, run_cli):
    hub.fail_next("unavailable", "unavailable")
    result = push_cli(run_cli, hub_plugin, "--ckpt-dir", trained.run_dir, "--repo-id", "org/m")
    assert result.exit_code == 0, result.output
    assert len(hub.calls) == 3
    assert "(attempt 1 of 4)" in result.stderr and "Trying again in 0.02 s." in result.stderr
    repo = hub.repo("org/m")
    assert result.stdout.strip() == str(repo)
    assert hub.calls[-1]["message"] == f"Upload {trained.checkpoint.name} with sft-sdk"
    assert hub.calls[-1]["private"] is True
    local = folder_digest(trained.checkpoint)
    pushed = folder_digest(repo)
    assert pushed["adapter_model.safetensors"] == local["adapter_model.safetensors"]
    assert pushed["tokenizer.json"] == local["tokenizer.json"]


def test_a_push_that_keeps_failing_says_how_to_finish_it_and_touches_nothing(
        trained, hub, hub_plugin, run_cli):
    run_before = sorted(p.name for p in trained.run_dir.iterdir())
    checkpoint_before = folder_digest(trained.checkpoint)
    hub.fail_next(*["unavailable"] * 4)
    result = push_cli(run_cli, hub_plugin, "--ckpt-dir", trained.checkpoint, "--repo-id",
                      "org/m", "--public")
    assert result.exit_code == 1
    message = result.stderr
    assert f"Pushing {trained.checkpoint} to the flaky repository 'org/m' failed 4 times" \
        in message
    assert "HTTP 503" in message and "The local files are intact" in message
    assert "Traceback" not in result.output
    assert len(hub.calls) == 4 and not hub.repo("org/m").exists()
    assert folder_digest(trained.checkpoint) == checkpoint_before
    assert sorted(p.name for p in trained.run_dir.iterdir()) == run_before  # no staging left

    again = run_cli("--plugin", hub_plugin, *resume_command(message))
    assert again.exit_code == 0, again.output
    assert hub.calls[-1]["private"] is False  # --public carried over
    assert folder_digest(hub.repo("org/m"))["adapter_model.safetensors"] == \
        checkpoint_before["adapter_model.safetensors"]
    assert folder_digest(trained.checkpoint) == checkpoint_before


def test_a_refused_push_is_not_retried(trained, hub, hub_plugin, run_cli):
    hub.fail_next("refused")
    result = push_cli(run_cli, hub_plugin, "--ckpt-dir", trained.checkpoint, "--repo-id",
                      "org/m")
    assert result.exit_code == 1 and len(hub.calls) == 1
    assert "The hub refused the token" in result.stderr
    assert "once the cause is fixed, this command completes the upload: sdk push" \
        in result.stderr


def test_the_token_never_shows_even_when_the_hub_library_echoes_it(
        trained, hub, hub_plugin, run_cli, monkeypatch):
    hub.fail_next("unavailable", "refused")
    refused = push_cli(run_cli, hub_plugin, "--ckpt-dir", trained.checkpoint, "--repo-id",
                       "org/m", "--token", TOKEN)
    hub.fail_next("crash")
    crashed = push_cli(run_cli, hub_plugin, "--ckpt-dir", trained.checkpoint, "--repo-id",
                       "org/m", "--token", TOKEN)
    monkeypatch.setenv("FLAKY_TOKEN", ENV_TOKEN)  # the token the library finds itself
    hub.fail_next("unavailable", "refused")
    from_env = push_cli(run_cli, hub_plugin, "--ckpt-dir", trained.checkpoint, "--repo-id",
                        "org/m")
    pushed = push_cli(run_cli, hub_plugin, "--ckpt-dir", trained.checkpoint, "--repo-id",
                      "org/m", "--hub-token", TOKEN)
    assert [r.exit_code for r in (refused, crashed, from_env, pushed)] == [1, 1, 1, 0]
    assert "token=***" in refused.stderr and "The hub refused the token ***" in refused.stderr
    assert "--token YOUR_TOKEN" in refused.stderr
    assert "RuntimeError: bug in the library, token=***" in crashed.stderr
    assert "The hub refused the token ***" in from_env.stderr
    for result in (refused, crashed, from_env, pushed):
        assert TOKEN not in result.output and ENV_TOKEN not in result.output
    for path in hub.repo("org/m").rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


def test_the_card_names_the_hub_ids_and_leaks_no_local_path(trained, registry, hub,
                                                            hub_plugin, run_cli, tiny_model_dir):
    assert push_cli(run_cli, hub_plugin, "--ckpt-dir", trained.run_dir, "--repo-id",
                    "org/m").exit_code == 0
    card = (hub.repo("org/m") / "README.md").read_text()
    meta = front_matter(card)
    # trained from --model-id-or-path, yet the card names the base model's id on the hub
    assert meta["base_model"] == "org/tiny-base"
    assert meta["base_model_relation"] == "adapter" and meta["library_name"] == "peft"
    assert meta["datasets"] == ["org/identity-data"]  # the local .jsonl is left out
    assert {"sft-sdk", "lora", MODEL_TYPE} <= set(meta["tags"])
    state = json.loads((trained.checkpoint / "trainer_state.json").read_text())
    loss = [r["loss"] for r in state["log_history"] if "loss" in r][-1]
    eval_loss = [r["eval_loss"] for r in state["log_history"] if "eval_loss" in r][-1]
    assert f"| 4 | {state['epoch']:.4g} | {loss:.4g} | {eval_loss:.4g} |" in card
    assert '"lora_rank": 8' in card

    published = json.loads((hub.repo("org/m") / "sft_args.json").read_text())
    local = json.loads((trained.checkpoint / "sft_args.json").read_text())
    assert local["model_id_or_path"] == str(tiny_model_dir)
    assert published["model_id_or_path"] is None and published["output_dir"] is None
    assert published["dataset"] == ["tiny-identity"]
    assert {k: published[k] for k in ("model_type", "sft_type", "template", "lora_rank")} == \
        {k: local[k] for k in ("model_type", "sft_type", "template", "lora_rank")}
    for text in (card, json.dumps(published)):
        assert str(tiny_model_dir) not in text and "local.jsonl" not in text
        assert str(trained.run_dir.parent.parent) not in text


def test_the_card_of_a_full_model_and_of_the_local_hub(registry, tmp_path):
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    saved = {"model_type": MODEL_TYPE, "sft_type": "full", "template": "chatml",
             "dataset": [str(tmp_path / "data.jsonl"), "owner/hub-data#100", "tiny-identity",
                         "data/train.csv", "./folder"]}
    (checkpoint / "config.json").write_text("{}")
    meta = front_matter(model_card(checkpoint, saved, registry, "modelscope", "org/m"))
    assert meta["library_name"] == "transformers" and meta["base_model_relation"] == "finetune"
    assert meta["base_model"] == "org/tiny-base"
    assert meta["datasets"] == ["owner/hub-data", "tiny-identity"]  # no id on modelscope
    meta = front_matter(model_card(checkpoint, saved, registry, "flaky", "org/m"))
    assert meta["datasets"] == ["owner/hub-data", "org/identity-data"]
    (checkpoint / "config.json").write_text('{"quantization_config": {"bits": 4}}')
    meta = front_matter(model_card(checkpoint, saved, registry, "modelscope", "org/m"))
    assert meta["base_model_relation"] == "quantized"
    # the local hub's ids are folders: no base model rather than a path
    meta = front_matter(model_card(checkpoint, saved, registry, "local", "/repos/m"))
    assert "base_model" not in meta and "base_model_relation" not in meta


def test_training_state_is_pushed_only_when_asked(trained, hub, hub_plugin, run_cli, tmp_path):
    run = shutil.copytree(trained.checkpoint.parent, tmp_path / trained.checkpoint.parent.name)
    checkpoint = run / trained.checkpoint.name
    # what a --deepspeed checkpoint holds besides: ZeRO's shards and its scripts
    (checkpoint / "global_step2").mkdir()
    (checkpoint / "global_step2" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(
        b"shard")
    (checkpoint / "latest").write_text("global_step2")
    (checkpoint / "zero_to_fp32.py").write_text("# DeepSpeed's")
    local = folder_digest(checkpoint)
    state_files = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
                   "training_args.bin", "latest", "zero_to_fp32.py",
                   "global_step2/zero_pp_rank_0_mp_rank_00_optim_states.pt"}
    assert state_files <= set(local)  # so that leaving them out means something
    assert push_cli(run_cli, hub_plugin, "--ckpt-dir", checkpoint, "--repo-id",
                    "org/small").exit_code == 0
    assert not state_files & set(folder_digest(hub.repo("org/small")))
    assert push_cli(run_cli, hub_plugin, "--ckpt-dir", checkpoint, "--repo-id",
                    "org/whole", "--push-training-state").exit_code == 0
    pushed = folder_digest(hub.repo("org/whole"))
    assert {name: pushed[name] for name in state_files} == {n: local[n] for n in state_files}
    assert set(TRAINING_STATE) >= {"optimizer.pt", "trainer_state.json",
                                   "adalora_state.pt", "trained_adapter.safetensors"}


def test_push_to_hub_is_checked_before_the_model_loads(hub_plugin, tmp_path, run_cli):
    common = ("--plugin", hub_plugin, "sft", "--model-type", MODEL_TYPE, "--dataset",
              "tiny-identity", "--output-dir", tmp_path / "out", "--push-to-hub")
    no_repo = run_cli(*common, "--hub", "flaky")
    assert no_repo.exit_code == 1
    assert "--push-to-hub needs --hub-model-id" in no_repo.stderr
    no_hub = run_cli(*common, "--hub", "flakey", "--hub-model-id", "org/m")
    assert no_hub.exit_code == 1 and "Unknown hub 'flakey'" in no_hub.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["end", "push_last", "push_best", "checkpoint",
                                      "all_checkpoints"])
def test_each_strategy_pushes_what_it_says(strategy, registry, hub, tmp_path, tiny_model_dir):
    # save_total_limit=1: rotation keeps the newest and the best checkpoint
    result = train(registry, tmp_path / "out", tiny_model_dir, push_to_hub=True,
                   hub_model_id="org/m", push_hub_strategy=strategy, save_total_limit=1)
    pushed = [call["message"].split()[1] for call in hub.calls]
    log = [json.loads(line) for line in (result.run_dir / "logging.jsonl").read_text()
           .splitlines()]
    evals = {r["step"]: r["eval_loss"] for r in log if "eval_loss" in r}
    assert sorted(evals) == [2, 4]
    best = min(evals, key=evals.get)
    expected = {"end": ["checkpoint-4"], "push_last": ["checkpoint-4"],
                "push_best": [f"checkpoint-{best}"],
                "checkpoint": ["checkpoint-2", "checkpoint-4"],
                "all_checkpoints": ["checkpoint-2", "checkpoint-4"]}[strategy]
    assert pushed == expected
    assert all(call["thread"].startswith("sdk-push") for call in hub.calls)  # in the background
    repo = hub.repo("org/m")
    card = (repo / "README.md").read_text()
    assert f"from `{expected[-1]}`" in card
    last = folder_digest(result.checkpoint)["adapter_model.safetensors"]
    if strategy == "all_checkpoints":
        assert sorted(p.name for p in repo.iterdir()) == ["README.md", "checkpoint-2",
                                                          "checkpoint-4"]
        assert folder_digest(repo / "checkpoint-4")["adapter_model.safetensors"] == last
        assert (repo / "checkpoint-2" / "adapter_model.safetensors").is_file()
    else:
        assert not list(repo.glob("checkpoint-*"))
        assert (folder_digest(repo)["adapter_model.safetensors"] == last) == (expected[-1] ==
                                                                      "checkpoint-4")
    assert not list(result.run_dir.glob(".sdk-push-*"))


@pytest.mark.slow
def test_a_push_that_fails_during_training_is_reported_at_the_end(registry, hub, hub_plugin,
                                                                  tmp_path, tiny_model_dir,
                                                                  run_cli):
    hub.fail_next(*["unavailable"] * 4, "refused")  # checkpoint-2 fails, then checkpoint-4
    with pytest.raises(SdkError) as failure:
        train(registry, tmp_path / "out", tiny_model_dir, push_to_hub=True,
              hub_model_id="org/m", push_hub_strategy="all_checkpoints", hub_token=TOKEN)
    message = str(failure.value)
    assert "checkpoint-2 to the flaky repository 'org/m' failed 4 times" in message
    assert "checkpoint-4 to the flaky repository 'org/m' failed: The hub refused the token ***" \
        in message
    run_dir = only_run(tmp_path / "out", MODEL_TYPE)
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best_checkpoint.json", "checkpoint-2", "checkpoint-4", "logging.jsonl",
        "sft_args.json"]
    for path in [*run_dir.rglob("*"), *(tmp_path / "flaky-hub").rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in message

    for line in message.splitlines():  # each failure's own command completes it
        command = [word.replace("YOUR_TOKEN", TOKEN) for word in resume_command(line)]
        assert "--path-in-repo" in command
        assert run_cli("--plugin", hub_plugin, *command).exit_code == 0
    repo = hub.repo("org/m")
    for name in ("checkpoint-2", "checkpoint-4"):
        assert folder_digest(repo / name)["adapter_model.safetensors"] == \
            folder_digest(run_dir / name)["adapter_model.safetensors"]


def test_round_trip_through_the_local_hub(trained, hub_plugin, tmp_path, run_cli):
    """Push a run to the `local` hub, download it, and `sdk infer` from the download answers
    exactly as from the checkpoint."""
    repo = tmp_path / "hub" / "tiny-chat"
    pushed = run_cli("--plugin", hub_plugin, "push", "--hub", "local", "--ckpt-dir",
                     trained.run_dir, "--repo-id", repo)
    assert pushed.exit_code == 0, pushed.output
    from sdk.hubs.local import download

    downloaded = download(str(repo))
    query = ("--query", "Who are you?", "--max-new-tokens", "12", "--stream", "false")
    here = run_cli("--plugin", hub_plugin, "infer", "--ckpt-dir", trained.checkpoint, *query)
    there = run_cli("--plugin", hub_plugin, "infer", "--ckpt-dir", downloaded, *query)
    assert here.exit_code == 0 and there.exit_code == 0, there.output
    assert here.stdout.strip() and there.stdout == here.stdout
    assert f"loading {downloaded}" in there.stderr


@pytest.mark.slow
@pytest.mark.parametrize("hub_name", ["huggingface", "modelscope"])
def test_round_trip_through_a_fake_hub_server(hub_name, request, hub_plugin, tiny_model_dir,
                                              tmp_path, run_cli):
    """`sdk sft --push-to-hub` (a process of its own, pointed at the fake Hugging Face or
    ModelScope server by the hub library's environment variable) gets one server error on the
    way and retries; downloaded through the hub client into a fresh folder, the model answers
    `sdk infer` exactly as the local checkpoint does."""
    if hub_name == "huggingface":
        server = request.getfixturevalue("hf_hub_server")
        server.fail_next(1, status=503, path_contains="/api/repos/create")
        endpoint = {"HF_ENDPOINT": server.url}
    else:
        server = request.getfixturevalue("ms_hub_server")
        server.fail_next(1, status=503, path_contains="/api/v1/models")
        endpoint = {"MODELSCOPE_ENDPOINT": server.url}
    sdk = Path(sys.executable).with_name("sdk")
    sft = subprocess.run(
        [sdk, "--plugin", hub_plugin, "sft", "--model-type", MODEL_TYPE, "--model-id-or-path",
         tiny_model_dir, "--dataset", "tiny-identity", "--max-steps", "2", "--batch-size", "2",
         "--gradient-accumulation-steps", "1", "--learning-rate", "0.01", "--output-dir",
         tmp_path / "out", "--hub", hub_name, "--push-to-hub", "--hub-model-id",
         "org/tiny-chat", "--hub-token", server.token],
        capture_output=True, text=True, timeout=300, env={**os.environ, **endpoint})
    assert sft.returncode == 0, sft.stderr
    assert "(attempt 1 of 4)" in sft.stderr and "[sdk] pushed checkpoint-2 to" in sft.stderr
    assert server.token not in sft.stdout + sft.stderr
    checkpoint = next((tmp_path / "out" / MODEL_TYPE).glob("v0-*/checkpoint-2"))

    repo = server.repos[("model", "org/tiny-chat")]
    assert repo.private
    assert {"README.md", "sft_args.json", "adapter_model.safetensors"} <= set(repo.files)
    assert not {"optimizer.pt", "trainer_state.json"} & set(repo.files)
    assert front_matter(repo.files["README.md"].decode())["base_model"] == "org/tiny-base"
    assert all(server.token.encode() not in data for data in repo.files.values())
    assert repo.files["adapter_model.safetensors"] == \
        (checkpoint / "adapter_model.safetensors").read_bytes()

    from sdk.hubs.huggingface import download as hf_download
    from sdk.hubs.modelscope import download as ms_download

    download = hf_download if hub_name == "huggingface" else ms_download
    downloaded = download("org/tiny-chat", token=server.token, endpoint=server.url)
    assert downloaded.is_dir() and not downloaded.is_relative_to(tmp_path / "out")
    query = ("--query", "Who are you?", "--max-new-tokens", "12", "--stream", "false")
    here = run_cli("--plugin", hub_plugin, "infer", "--ckpt-dir", checkpoint, *query)
    there = run_cli("--plugin", hub_plugin, "infer", "--ckpt-dir", downloaded, *query)
    assert here.exit_code == 0 and there.exit_code == 0, there.output
    assert here.stdout.strip() and there.stdout == here.stdout


def test_a_push_that_could_not_succeed_is_refused_before_training(
        hf_hub_server, run_cli, tiny_plugin_file, identity_data, tmp_path):
    def sft(*flags):
        return run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                       "--dataset", identity_data, "--output-dir", tmp_path / "out",
                       "--push-to-hub", "--hub", "huggingface", *flags)

    no_token = sft("--hub-model-id", "org/m")  # the fixture leaves huggingface_hub no token
    assert no_token.exit_code == 1
    assert "--push-to-hub: no token to push to huggingface with. Give one with --hub-token, " \
           "the HF_TOKEN environment variable" in no_token.stderr
    bad_id = sft("--hub-model-id", "not a repo id", "--hub-token", TOKEN)
    assert bad_id.exit_code == 1
    assert "--hub-model-id 'not a repo id' is not a repository id" in bad_id.stderr
    assert not (tmp_path / "out").exists()  # nothing trained, no run folder


@pytest.mark.parametrize("settings, note", [
    ({"init_lora_weights": "pissa"}, "The adapter has rank 16 (adapter_config.json), not the "
     "run's --lora-rank 8: pissa adapters are saved converted to plain LoRA of twice the rank"),
    ({"init_lora_weights": "default", "adapter": "/old/run/checkpoint-9"},
     "The adapter has rank 16 (adapter_config.json), not the run's --lora-rank 8: the run "
     "continued an adapter (--adapter), which keeps its own rank."),
    ({"init_lora_weights": "pissa", "lora_rank": 16}, None),
])
def test_the_card_says_why_the_adapter_has_another_rank_than_the_run(registry, tmp_path,
                                                                    settings, note):
    checkpoint = tmp_path / "checkpoint-3"
    checkpoint.mkdir()
    (checkpoint / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 16}')
    saved = {"model_type": MODEL_TYPE, "sft_type": "lora", "template": "chatml",
             "dataset": ["tiny-identity"], "lora_rank": 8, **settings}
    card = model_card(checkpoint, saved, registry, "modelscope", "org/m")
    if note:
        assert note in card
    else:
        assert "The adapter has rank" not in card


@pytest.mark.parametrize("sft_type, about", [("lora", "A lora adapter of"),
                                             ("adalora", "An adalora adapter of")])
def test_the_card_says_what_the_checkpoint_is(registry, tmp_path, sft_type, about):
    saved = {"model_type": MODEL_TYPE, "sft_type": sft_type, "template": "chatml",
             "dataset": ["tiny-identity"]}
    assert about in model_card(tmp_path, saved, registry, "modelscope", "org/m")


@pytest.mark.parametrize("model_type, sft_type, says", [
    ("internlm2-chat-7b", "lora", "it names that architecture's modules, so it does not load "
     "onto the official remote code"),
    ("internlm-chat-7b", "lora", "its module names are the official code's too, so it also "
     "loads onto the official remote code"),
    ("internlm2-chat-7b", "full", "it loads with transformers alone, without "
     "`trust_remote_code`, and not with the official remote code"),
    ("qwen2.5-7b-instruct", "lora", None),  # loaded as published: nothing to say
])
def test_the_card_says_what_a_converted_model_types_files_apply_to(tmp_path, model_type,
                                                                    sft_type, says):
    from sdk.plugins import load_plugins

    saved = {"model_type": model_type, "sft_type": sft_type, "template": "chatml",
             "dataset": ["tiny-identity"]}
    card = model_card(tmp_path, saved, load_plugins().registry, "huggingface", "org/m")
    if says is None:
        assert "converted on load" not in card
    else:
        assert "official checkpoint, converted on load by sft-sdk to transformers' own " \
               "`llama` architecture (no remote code runs)" in card
        assert says in card
