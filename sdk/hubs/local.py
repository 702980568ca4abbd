"""A hub that is a folder on this machine: repo ids are paths."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from sdk.errors import SdkError
from sdk.folders import disk_full_said
from sdk.hookspecs import hookimpl
from sdk.specs import Hub


def download(repo_id: str, revision: str = "main", ignore_patterns: Sequence[str] = (), *,
             repo_type: str = "model", token: str | None = None,
             endpoint: str | None = None) -> Path:
    path = Path(repo_id).expanduser()
    if not path.is_dir():
        raise SdkError(f"Local hub: '{repo_id}' is not a folder.")
    return path


def push(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
         ignore_patterns: Sequence[str] = (), commit_message: str = "",
         endpoint: str | None = None) -> str:
    target = Path(repo_id).expanduser()
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    kept = (f"the repository {target} as it was" if target.exists()
            else f"nothing, {target} was not made")
    with disk_full_said(partial, kept):
        try:
            if target.exists():  # as on the other hubs, files not pushed again stay there
                shutil.copytree(target, partial)
            shutil.copytree(folder, partial, ignore=shutil.ignore_patterns(*ignore_patterns),
                            dirs_exist_ok=True)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
    if target.exists():
        shutil.rmtree(target)
    partial.rename(target)  # readers never see a half-copied folder
    return str(target)


@hookimpl
def register_hubs(register):
    register(Hub("local", download, push, "A folder on this machine; repo ids are paths"))
