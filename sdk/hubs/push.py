"""Pushing a checkpoint to a hub (`sdk push`, `sdk sft --push-to-hub`).

The checkpoint itself is never written to: what is uploaded is a staging folder beside it,
made of hard links to its files (copies where links cannot be made) plus the model card and
the published ``sft_args.json``, and removed afterwards. A hub that does not answer
(:class:`HubUnavailable`) is tried again after growing delays; a push that still fails says
what failed, that the local files are intact, and the `sdk push` command that completes it
(a hub keeps the files already uploaded and replaces those pushed again). No token appears in
any message, even one a hub library echoed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from sdk.config import SftArguments
from sdk.errors import HubUnavailable, SdkError
from sdk.folders import disk_full_said
from sdk.hubs.card import model_card, public_arguments
from sdk.options import hub_keywords
from sdk.registry import Registry
from sdk.runs.run_dir import ARGS_FILE, read_saved_arguments
from sdk.specs import Hub, resolve_callable
from sdk.tuners.adalora import STATE_FILE as ADALORA_STATE
from sdk.tuners.mutated_init import STATE_FILE as UNCONVERTED_ADAPTER

# Needed only to resume training, not to use the model; uploaded with --push-training-state.
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth",
                  "trainer_state.json", "training_args.bin", ADALORA_STATE,
                  UNCONVERTED_ADAPTER, "global_step*", "latest", "zero_to_*.py",
                  # accelerate's under --fsdp (sdk/train/fsdp.py), next to the whole weights
                  "pytorch_model_fsdp*", "optimizer.bin", "optimizer_*")
CARD_FILE = "README.md"
# Seconds to wait before each new attempt: four attempts within about 40 s.
RETRY_DELAYS = (2.0, 8.0, 30.0)


@dataclass(frozen=True)
class Destination:
    """Where a push goes and how."""

    hub: Hub
    repo_id: str
    private: bool = True
    token: str | None = None
    training_state: bool = False  # also upload TRAINING_STATE files
    hub_keywords: dict[str, Any] = field(default_factory=dict)  # the hub's options, if any
    gguf_type: str | None = None  # also upload the merged model as a GGUF file of this type

    def scrub(self, text: str) -> str:
        """``text`` without the token given or the one in the hub's environment variable."""
        secrets = {self.token, os.environ.get(self.hub.token_env) if self.hub.token_env else None}
        for secret in secrets - {None, ""}:
            text = text.replace(secret, "***")
        return text

    def where(self) -> str:
        return f"{self.hub.name} repository '{self.repo_id}'"

    def resume_command(self, checkpoint: Path, files_folder: str) -> str:
        """The `sdk push` command that uploads ``checkpoint`` as this push would have."""
        words = ["sdk", "push", "--ckpt-dir", str(checkpoint), "--hub", self.hub.name,
                 "--repo-id", self.repo_id]
        words += [] if self.private else ["--public"]
        words += ["--push-training-state"] if self.training_state else []
        words += ["--push-gguf", self.gguf_type] if self.gguf_type else []
        words += ["--path-in-repo", files_folder] if files_folder else []
        command = shlex.join(words)
        if self.token:  # the token itself is never shown: the user gives it again
            command += " --token YOUR_TOKEN"
        return command


def check_repo_id(hub: Hub, repo_id: str, flag: str) -> None:
    """``repo_id`` is an id ``hub`` can push to (its ``check_repo_id``), before anything is
    staged or trained."""
    if hub.check_repo_id is None:
        return
    try:
        resolve_callable(hub.check_repo_id)(repo_id)
    except ValueError as error:
        raise SdkError(f"{flag} '{repo_id}' is not a repository id on {hub.name}: "
                       f"{error}.") from None


def push_destination(args: SftArguments, registry: Registry) -> Destination | None:
    """The destination of ``--push-to-hub``, checked before any model loads; None without it."""
    if not args.push_to_hub:
        return None
    if not args.hub_model_id:
        raise SdkError("--push-to-hub needs --hub-model-id: the repository to push to, e.g. "
                       "your-name/my-model.")
    hub = registry.get("hubs", args.hub)
    check_repo_id(hub, args.hub_model_id, "--hub-model-id")
    if args.push_gguf:
        from sdk.export_gguf import check_spec

        check_spec(registry.get("models", args.model_type))
    if hub.find_token and not args.hub_token and not resolve_callable(hub.find_token)():
        variable = f", the {hub.token_env} environment variable" if hub.token_env else ""
        raise SdkError(f"--push-to-hub: no token to push to {hub.name} with. Give one with "
                       f"--hub-token{variable} or the hub's login command, or leave out "
                       "--push-to-hub (`sdk push` uploads a checkpoint later).")
    return Destination(hub, args.hub_model_id, args.hub_private_repo, args.hub_token,
                       args.push_training_state, hub_keywords(hub, args), args.push_gguf)


def stage(checkpoint: Path, destination: Destination, registry: Registry,
          files_folder: str = "") -> Path:
    """A new folder laid out as the repository should be: the checkpoint's files (under
    ``files_folder`` if given) but for the training state unless asked, with the model card
    at the top and the published arguments. The caller removes it."""
    saved = read_saved_arguments(checkpoint / ARGS_FILE)
    card = model_card(checkpoint, saved, registry, destination.hub.name,
                      destination.repo_id, files_folder, destination.gguf_type)
    published = json.dumps(public_arguments(saved), indent=2, ensure_ascii=False)
    try:  # beside the checkpoint, so that hard links work (same filesystem)
        root = Path(tempfile.mkdtemp(prefix=".sdk-push-", dir=checkpoint.parent))
    except OSError:
        root = Path(tempfile.mkdtemp(prefix="sdk-push-"))
    try:
        with disk_full_said(root, f"{checkpoint} as it was; nothing was pushed"):
            files = root / files_folder
            left_out = () if destination.training_state else TRAINING_STATE
            for source in sorted(checkpoint.rglob("*")):
                relative = source.relative_to(checkpoint)
                if (source.is_dir() or str(relative) in (CARD_FILE, ARGS_FILE)
                        or any(fnmatch.fnmatch(relative.parts[0], p) for p in left_out)):
                    continue
                target = files / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
            files.mkdir(parents=True, exist_ok=True)
            if destination.gguf_type:
                add_gguf(files, root / ".gguf-export", checkpoint, destination.gguf_type,
                         registry)
            (files / ARGS_FILE).write_text(destination.scrub(published) + "\n",
                                           encoding="utf-8")
            (root / CARD_FILE).write_text(destination.scrub(card), encoding="utf-8")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


def add_gguf(files: Path, output: Path, checkpoint: Path, gguf_type: str,
             registry: Registry) -> None:
    """The checkpoint merged into a GGUF file (`sdk export --to gguf --ollama` into
    ``output``, removed after) in ``files``, with its Modelfile where the template has one."""
    from sdk.config import ExportArguments
    from sdk.export import run_export

    arguments = ExportArguments(ckpt_dir=str(checkpoint), to="gguf", gguf_type=gguf_type,
                                ollama=True, output_dir=str(output))
    try:
        exported = run_export(arguments, registry)
    except SdkError as error:
        if not str(error).startswith("--ollama:"):
            raise
        click.echo(f"warning: {error} The GGUF file is pushed without a Modelfile.", err=True)
        exported = run_export(dataclasses.replace(arguments, ollama=False), registry)
    for path in exported.iterdir():
        if path.name != ARGS_FILE:
            path.rename(files / path.name)
    shutil.rmtree(exported)


def upload(folder: Path, destination: Destination, checkpoint: Path,
           files_folder: str = "") -> str:
    """Push a staged folder, trying again after each of RETRY_DELAYS while the hub is
    unavailable; returns the repository's URL."""
    push = resolve_callable(destination.hub.push)
    what = f"Pushing {checkpoint} to the {destination.where()}"
    resume = destination.resume_command(checkpoint, files_folder)
    for attempt, delay in enumerate((*RETRY_DELAYS, None), 1):
        try:
            return push(folder, destination.repo_id, private=destination.private,
                        token=destination.token,
                        commit_message=f"Upload {checkpoint.name} with sft-sdk",
                        **destination.hub_keywords)
        except HubUnavailable as error:
            reason = destination.scrub(str(error)).rstrip(".")
            if delay is None:
                raise SdkError(f"{what} failed {attempt} times: {reason}. The local files are "
                               "intact; run this command later to complete the upload: "
                               f"{resume}") from None
            click.echo(f"[sdk] {what} failed (attempt {attempt} of {len(RETRY_DELAYS) + 1}): "
                       f"{reason}. Trying again in {delay:g} s.", err=True)
            time.sleep(delay)
        except Exception as error:  # SdkError, or a library error from a third-party hub
            reason = str(error) if isinstance(error, SdkError) else \
                f"{type(error).__name__}: {error}"
            raise SdkError(f"{what} failed: {destination.scrub(reason).rstrip('.')}. The local "
                           "files are intact; once the cause is fixed, this command completes "
                           f"the upload: {resume}") from None


def push_checkpoint(checkpoint: Path, destination: Destination, registry: Registry,
                    files_folder: str = "") -> str:
    """Stage ``checkpoint``, upload it and remove the staging folder; returns the URL."""
    folder = stage(checkpoint, destination, registry, files_folder)
    try:
        return upload(folder, destination, checkpoint, files_folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
