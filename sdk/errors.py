"""The one exception type the CLI turns into a clean message instead of a traceback."""


class SdkError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class HubUnavailable(SdkError):
    """A hub that did not answer properly (server error, timeout, lost connection): worth
    retrying with backoff, unlike a refused token or a missing repository."""


class UnknownName(SdkError):
    """No plugin registers ``name`` of ``kind`` ("models", "templates", ...): a plugin that
    failed to load may be the one that would have."""

    def __init__(self, message: str, kind: str, name: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.name = name
