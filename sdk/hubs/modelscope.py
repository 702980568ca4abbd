"""The ``modelscope`` hub: models and datasets on ModelScope, through ``modelscope_hub`` (the
client library that does the HTTP work of ``modelscope`` 1.38+).

Everything else is modelscope's own setting, read from its environment at each call: the
endpoint (``MODELSCOPE_ENDPOINT``, else modelscope.cn), the token (``MODELSCOPE_API_TOKEN``,
else the login ``modelscope login`` saved under ``MODELSCOPE_HOME``, default ~/.modelscope)
and the download cache (``MODELSCOPE_CACHE``, default ~/.cache/modelscope). Timeouts and retry
counts are modelscope's too (``MODELSCOPE_API_TIMEOUT``, ``MODELSCOPE_DOWNLOAD_TIMEOUT``,
``MODELSCOPE_REPO_TREE_PAGE_TIMEOUT_SECONDS``, ``MODELSCOPE_API_MAX_RETRIES``,
``MODELSCOPE_DOWNLOAD_MAX_RETRIES``, ...), read once, when modelscope_hub is first imported.
ModelScope has no offline switch: a download always asks the hub, so an offline run names
its folder with ``--model-id-or-path``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sdk.errors import HubUnavailable, SdkError
from sdk.hookspecs import hookimpl
from sdk.hubs.repo_id import check_repo_id
from sdk.specs import Hub

TOKEN_ENV = "MODELSCOPE_API_TOKEN"
# ModelScope repositories live on "master"; "main" is the contract's word for the default branch
DEFAULT_BRANCH = "master"
HOW_TO_GIVE_A_TOKEN = f"set {TOKEN_ENV}, run `modelscope login`, or pass --hub-token"


def download(repo_id: str, revision: str = "main", ignore_patterns: Sequence[str] = (), *,
             repo_type: str = "model", token: str | None = None,
             endpoint: str | None = None) -> Path:
    """The repository's files at ``revision``, in modelscope's cache; a second call reuses
    the files already there."""
    config, api = _client(token, endpoint)
    branch = revision if revision and revision != "main" else DEFAULT_BRANCH
    with _translated_errors(config, f"{repo_type} repo '{repo_id}' at revision '{branch}'"):
        return Path(api.download_repo(repo_id, repo_type, revision=branch,
                                      ignore_patterns=list(ignore_patterns) or None))


def push(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
         ignore_patterns: Sequence[str] = (), commit_message: str = "",
         endpoint: str | None = None) -> str:
    """Upload ``folder`` to the model repo ``repo_id`` (created first, private unless
    ``private=False``; an existing repo keeps its visibility) and return the repo's URL."""
    if not Path(folder).is_dir():
        raise SdkError(f"Cannot push '{folder}' to ModelScope: it is not a folder.")
    config, api = _client(token, endpoint)
    logged = _LoggedErrors()
    with _translated_errors(config, f"model repo '{repo_id}'", writing=True, logged=logged):
        _create_repo(api, repo_id, private)
        # modelscope prints an upload report on stdout; stdout is the command's own output
        with contextlib.redirect_stdout(sys.stderr), logged:
            commits = api.upload_folder(
                repo_id, "model", folder, commit_message=commit_message or None,
                ignore_patterns=list(ignore_patterns),
                use_cache=False)  # its resume cache would be written into the folder
    if not commits:
        raise SdkError(f"Nothing was pushed to ModelScope model repo '{repo_id}': it "
                       "committed no file.")
    return f"{config.endpoint}/models/{repo_id}"


def _client(token: str | None, endpoint: str | None) -> tuple[Any, Any]:
    """A fresh configuration each call, so that the environment of this moment counts."""
    from modelscope_hub import HubApi, HubConfig

    config = HubConfig(endpoint=endpoint, token=token)
    return config, HubApi(config=config)


def _create_repo(api: Any, repo_id: str, private: bool) -> None:
    """Create the repo with its visibility: upload_folder would create it public."""
    from modelscope_hub.errors import AlreadyExistsError

    try:
        api.create_repo(repo_id, "model", visibility="private" if private else "public")
    except AlreadyExistsError:
        pass  # pushing again updates the repo


class _LoggedErrors(logging.Handler):
    """While entered, the exceptions modelscope logs: why files failed to upload is said
    there only (upload_folder then raises a bare StorageError)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if isinstance(record.args, tuple):
            self.errors += [arg for arg in record.args if isinstance(arg, BaseException)]

    def __enter__(self) -> _LoggedErrors:
        logging.getLogger("modelscope_hub").addHandler(self)
        return self

    def __exit__(self, *exc_info: object) -> None:
        logging.getLogger("modelscope_hub").removeHandler(self)


@contextlib.contextmanager
def _translated_errors(config: Any, what: str, writing: bool = False,
                       logged: _LoggedErrors | None = None) -> Iterator[None]:
    """modelscope's exceptions as SdkError (HubUnavailable for those worth retrying)."""
    import requests
    from modelscope_hub.errors import (
        AuthenticationError,
        FileDownloadError,
        HubError,
        NotExistError,
        PermissionDeniedError,
        StorageError,
    )

    refusals = (AuthenticationError, PermissionDeniedError, NotExistError)
    try:
        yield
    except Exception as error:
        cause = error
        # A failure of some files stands for the whole transfer; a refusal comes first (no
        # retry helps it), else the first failure.
        if isinstance(error, FileDownloadError) and error.failed_files:
            failures = list(error.failed_files.values())
            cause = next((e for e in failures if isinstance(e, refusals)), failures[0])
        elif isinstance(error, StorageError) and logged is not None:
            cause = next((e for e in logged.errors if isinstance(e, refusals)), error)
        where = f"ModelScope ({config.endpoint}) {what}"
        detail = _describe(cause, config.token)
        if isinstance(cause, (AuthenticationError, PermissionDeniedError)):
            if config.token:
                need = "write access to it" if writing else "access to it"
                message = (f"{where}: the token was refused ({detail}). Check that the token "
                           f"is valid and has {need}; to give another, {HOW_TO_GIVE_A_TOKEN}.")
            else:
                message = (f"{where}: refused without a token ({detail}). A private repo (and "
                           f"any push) needs one: {HOW_TO_GIVE_A_TOKEN}.")
            raise SdkError(message) from None
        if isinstance(cause, NotExistError):
            hint = "" if config.token else f" A private repo needs a token: {HOW_TO_GIVE_A_TOKEN}."
            raise SdkError(f"{where} was not found ({detail}). Check the repo id and the "
                           f"revision.{hint}") from None
        if getattr(cause, "retryable", False) or isinstance(
                cause, requests.RequestException | ConnectionError | TimeoutError):
            raise HubUnavailable(f"{where}: the hub did not answer properly ({detail}). Try "
                                 "again later.") from None
        if isinstance(cause, HubError | OSError):  # OSError: the cache or folder on this side
            raise SdkError(f"{where}: {detail}") from None
        raise


def _describe(error: BaseException, token: str | None) -> str:
    """One line on what went wrong, without the token even if a server echoed it back."""
    status = getattr(error, "status_code", None)
    text = str(getattr(error, "message", "") or error or type(error).__name__)
    line = text.strip().splitlines()[0] if text.strip() else type(error).__name__
    if status is not None and not line.startswith("HTTP "):
        line = f"HTTP {status}: {line}"
    return line.replace(token, "***") if token else line


@hookimpl
def register_hubs(register):
    register(Hub("modelscope", download, push,
                 "ModelScope (MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN, MODELSCOPE_CACHE)",
                 token_env=TOKEN_ENV, check_repo_id=check_repo_id))
