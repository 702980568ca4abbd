"""Folders the commands write to: checked before the work that would fill them, and a disk
that fills while writing said in one line, with the half-written staging folder removed."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sdk.errors import SdkError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# How libraries that raise their own exception types word a full disk: safetensors'
# SafetensorError ("I/O error: No space left on device (os error 28)"), and the OS's strerror.
DISK_FULL_TEXT = ("os error 28", "os error 122", os.strerror(errno.ENOSPC),
                  os.strerror(errno.EDQUOT))
# Below this many free bytes a write error whose library gave no reason (torch.save's
# RuntimeError "unexpected pos 576 vs 534") is taken for a full disk.
NEARLY_FULL = 1 << 20


def os_reason(error: OSError) -> str:
    """"permission denied", "read-only file system", ...: the OS's reason, lower case."""
    return (error.strerror or str(error)).lower()


def require_writable(folder: str | Path, flag: str) -> None:
    """Refuse, naming ``flag``, a folder that cannot be created or written to: a file in the
    way (``a_file/sub``), no permission, a read-only filesystem. Nothing is created: the
    nearest folder that exists is probed with a file written and removed again."""
    folder = Path(folder)
    # lexists: False, not an error, under a folder we may not look into; the probe then fails
    existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
    if not existing.is_dir():
        if existing == folder:
            raise SdkError(f"{flag} '{folder}' is a file; give a folder.")
        raise SdkError(f"{flag} '{folder}' cannot be created: '{existing}' is a file in the "
                       "way; give a folder path.")
    probe = existing / f".sdk-write-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        where = "" if existing == folder else f" (in '{existing}', where it would be created)"
        raise SdkError(f"{flag} '{folder}' cannot be written: {os_reason(error)}{where}. Give "
                       "a folder you can write to, or change its permissions.") from None


def is_disk_full(error: BaseException, folder: Path) -> bool:
    """Whether ``error``, raised while writing under ``folder``, means the disk (or the
    user's quota) is full."""
    if isinstance(error, OSError) and error.errno in DISK_FULL:
        return True
    if any(text.lower() in str(error).lower() for text in DISK_FULL_TEXT):
        return True
    if not isinstance(error, (OSError, RuntimeError)):
        return False
    try:
        usage = os.statvfs(next(p for p in (folder, *folder.parents) if os.path.exists(p)))
    except OSError:
        return False
    free = usage.f_bfree if os.geteuid() == 0 else usage.f_bavail  # root may use reserved blocks
    return free * usage.f_frsize < NEARLY_FULL


@contextmanager
def disk_full_said(staging: Path, kept: str) -> Iterator[None]:
    """Turn a full disk while writing into ``staging`` into "no space left on device while
    writing FILE; kept: ``kept``", after removing ``staging``: the half-written files are of no
    use, and deleting them gives the space back."""
    try:
        yield
    except Exception as error:
        if not is_disk_full(error, staging):
            raise
        # safetensors, tokenizers and torch name no file: then the folder being written
        file = getattr(error, "filename", None) or staging
        if isinstance(error, shutil.Error) and error.args and isinstance(error.args[0], list):
            file = error.args[0][0][1]  # copytree's (source, destination, reason) of each file
        shutil.rmtree(staging, ignore_errors=True)
        raise SdkError(f"no space left on device while writing {file}; kept: {kept}. Free some "
                       "space and run the command again.") from None
