"""The one exception type the CLI turns into a clean message instead of a traceback."""


class SdkError(Exception):
    """A problem the user can fix: the message says what is wrong and what to do."""


class HubUnavailable(SdkError):
    """A hub that did not answer properly (server error, timeout, lost connection): worth
    retrying with backoff, unlike a refused token or a missing repository."""
