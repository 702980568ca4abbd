"""The ``huggingface`` hub: download and push through huggingface_hub.

The library's own settings apply: ``HF_ENDPOINT`` (when no endpoint is given), ``HF_TOKEN`` or
the ``hf auth login`` token (when no token is given), the cache (``HF_HUB_CACHE`` /
``HF_HOME``), offline mode (``HF_HUB_OFFLINE=1``: cached snapshots only) and
``HF_HUB_DOWNLOAD_TIMEOUT`` (seconds to wait for an answer). Failures become
:class:`SdkError` (:class:`HubUnavailable` for those worth retrying), never with the token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdk.errors import HubUnavailable, SdkError
from sdk.hookspecs import hookimpl
from sdk.hubs.repo_id import check_repo_id
from sdk.specs import Hub

REPO_TYPES = ("model", "dataset")
TOKEN_HINT = "give one with --hub-token, the HF_TOKEN environment variable or `hf auth login`"


def download(repo_id: str, revision: str = "main", ignore_patterns: Sequence[str] = (), *,
             repo_type: str = "model", token: str | None = None,
             endpoint: str | None = None) -> Path:
    """The repository's files at ``revision`` (minus ``ignore_patterns``), in the HF cache."""
    from huggingface_hub import snapshot_download

    if repo_type not in REPO_TYPES:
        raise SdkError(f"Hugging Face repo type '{repo_type}' is not one of "
                       f"{', '.join(REPO_TYPES)}.")
    bound_request_waits()
    with hub_errors(f"download {repo_type} '{repo_id}' (revision '{revision}')", token,
                    endpoint):
        return Path(snapshot_download(
            repo_id, repo_type=repo_type, revision=revision, token=token, endpoint=endpoint,
            ignore_patterns=list(ignore_patterns) or None))


def push(folder: str | Path, repo_id: str, *, private: bool = True, token: str | None = None,
         ignore_patterns: Sequence[str] = (), commit_message: str = "",
         endpoint: str | None = None) -> str:
    """Upload ``folder`` to model repository ``repo_id``, created first if needed (``private``
    applies then: an existing repository keeps its visibility); returns its URL."""
    from huggingface_hub import HfApi

    if not Path(folder).is_dir():
        raise SdkError(f"Cannot push '{folder}' to the Hugging Face Hub: it is not a folder.")
    bound_request_waits()
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(f"push to '{repo_id}'", token, endpoint):
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder,
                          ignore_patterns=list(ignore_patterns) or None,
                          commit_message=commit_message or "Upload with sft-sdk")
    return str(url)


def _bounded_wait(request: Any) -> None:
    """huggingface_hub sends its API calls (repo info, file tree, create repo, commit) with no
    timeout at all, so a stalled hub would hang a run forever; such a request gets the
    library's download timeout, ``HF_HUB_DOWNLOAD_TIMEOUT`` (10 s by default)."""
    from huggingface_hub import constants

    timeout = request.extensions.get("timeout") or {}
    if all(value is None for value in timeout.values()):
        seconds = float(constants.HF_HUB_DOWNLOAD_TIMEOUT)
        request.extensions["timeout"] = dict.fromkeys(("connect", "read", "write", "pool"),
                                                      seconds)


def bound_request_waits() -> None:
    """Add ``_bounded_wait`` to the library's shared HTTP session (new after a fork or a
    ``set_client_factory``, hence checked on every call)."""
    from huggingface_hub import get_session

    hooks = get_session().event_hooks["request"]
    if _bounded_wait not in hooks:
        hooks.append(_bounded_wait)


@contextmanager
def hub_errors(action: str, token: str | None, endpoint: str | None) -> Iterator[None]:
    """huggingface_hub's exceptions as one clear message; the cause is the first exception in
    the chain that says why (the library wraps some in a cache-lookup error)."""
    import httpx2
    from huggingface_hub import constants, errors

    try:
        yield
    except Exception as error:
        message = f"Hugging Face Hub ({endpoint or constants.ENDPOINT}): could not {action}"
        for cause in _chain(error):
            if isinstance(cause, errors.OfflineModeIsEnabled) or (
                    constants.is_offline_mode()
                    and isinstance(cause, errors.LocalEntryNotFoundError)):
                raise SdkError(f"{message}: it is not in the cache ({constants.HF_HUB_CACHE}) "
                               "and offline mode is on (HF_HUB_OFFLINE=1). Download it once "
                               "with offline mode off.") from error
            if isinstance(cause, errors.RevisionNotFoundError):
                raise SdkError(f"{message}: the repository has no such revision. Give a "
                               "branch, tag or commit that exists.") from error
            if isinstance(cause, errors.GatedRepoError):
                raise SdkError(f"{message}: the repository is gated. Accept its conditions on "
                               f"its page, then {TOKEN_HINT}.") from error
            if isinstance(cause, errors.RepositoryNotFoundError):
                raise SdkError(f"{message}: repository not found. Check the repo id; if the "
                               f"repository is private, {_token_advice(token)}.") from error
            if isinstance(cause, errors.HfHubHTTPError):
                raise _status_error(message, cause, token) from error
            if isinstance(cause, httpx2.TimeoutException):
                raise HubUnavailable(f"{message}: no answer in time (HF_HUB_DOWNLOAD_TIMEOUT "
                                     f"sets the wait, now {constants.HF_HUB_DOWNLOAD_TIMEOUT} s)."
                                     ) from error
            if isinstance(cause, httpx2.TransportError):
                raise HubUnavailable(f"{message}: {type(cause).__name__}: "
                                     f"{_redact(cause, token)}. Try again later.") from error
            if isinstance(cause, ValueError):  # an invalid repo id, revision or pattern
                raise SdkError(f"{message}: {_redact(cause, token)}") from error
        raise SdkError(f"{message}: {type(error).__name__}: {_redact(error, token)}") from error


def _status_error(message: str, error: Any, token: str | None) -> SdkError:
    status = error.response.status_code
    said = f"HTTP {status}" + (f": {_redact(error.server_message, token)}"
                               if error.server_message else "")
    if status == 401:
        if not _has_token(token):
            return SdkError(f"{message}: a token is needed and none was given ({said}); "
                            f"{TOKEN_HINT}.")
        return SdkError(f"{message}: the hub refused the token ({said}); it is wrong or "
                        f"expired: {TOKEN_HINT}.")
    if status == 403:
        return SdkError(f"{message}: the hub refused the token for this ({said}); give one "
                        f"with access to the repository (write access to push): {TOKEN_HINT}.")
    if status >= 500 or status in (408, 429):
        return HubUnavailable(f"{message}: the hub answered {said}. Try again later.")
    return SdkError(f"{message}: the hub answered {said}.")


def find_token() -> str | None:
    """The token huggingface_hub sends when none is given (HF_TOKEN, `hf auth login`)."""
    from huggingface_hub import get_token

    return get_token()


def _has_token(token: str | None) -> bool:
    """Was a token sent: given, or found by the library?"""
    return bool(token or find_token())


def _token_advice(token: str | None) -> str:
    if _has_token(token):
        return f"the token may be wrong or lack access to it: {TOKEN_HINT}"
    return f"a token is needed and none was given: {TOKEN_HINT}"


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _redact(text: object, token: str | None) -> str:
    """Library text, without the token should it ever echo one."""
    from huggingface_hub import get_token

    text = str(text)
    for secret in {token, get_token()} - {None, ""}:
        text = text.replace(secret, "***")
    return text


@hookimpl
def register_hubs(register):
    register(Hub("huggingface", download, push,
                 "The Hugging Face Hub (HF_ENDPOINT, HF_TOKEN, HF_HUB_CACHE, HF_HUB_OFFLINE)",
                 token_env="HF_TOKEN", find_token=find_token, check_repo_id=check_repo_id))
