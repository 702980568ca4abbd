"""Repository ids of the Hugging Face Hub and ModelScope (``OWNER/NAME``): what a push checks
before it stages anything and what a ``--dataset`` must look like to be read from a hub."""

from __future__ import annotations

import re

# huggingface_hub's validate_repo_id rules, which ModelScope's ids also follow: each part is 1 to
# 96 ASCII letters, digits, '-', '_' or '.', and neither starts nor ends with '-' or '.'; no
# '--' or '..' anywhere; no '.git' at the end. Both hubs need the owner part to push.
_PART = r"\w(?:[\w.-]{0,94}\w)?"
REPO_ID = re.compile(rf"(?!.*(?:--|\.\.))(?!.*\.git$){_PART}/{_PART}", re.ASCII)
REPO_ID_RULE = ("OWNER/NAME (letters, digits, '-', '_' and '.'; each part at most 96 characters, "
                "not starting or ending with '-' or '.'; no '--' or '..'), e.g. "
                "your-name/my-model")


def is_repo_id(text: str) -> bool:
    return REPO_ID.fullmatch(text) is not None


def check_repo_id(repo_id: str) -> None:
    """The ``Hub.check_repo_id`` of the Hugging Face Hub and ModelScope."""
    if not is_repo_id(repo_id):
        raise ValueError(f"give {REPO_ID_RULE}")
