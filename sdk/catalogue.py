"""The catalogue of first-party plugins (registry.toml): which plugin provides which name, for
install hints and for listing what is not installed."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path
from typing import Any

# sdk/registry.toml links to the repository's registry.toml and ships inside the package.
CATALOGUE_FILE = Path(__file__).with_name("registry.toml")


@functools.lru_cache(maxsize=1)
def first_party_plugins() -> tuple[dict[str, Any], ...]:
    if not CATALOGUE_FILE.is_file():
        return ()
    return tuple(tomllib.loads(CATALOGUE_FILE.read_text(encoding="utf-8"))["plugin"])


def provider(kind: str, name: str) -> str | None:
    """The first-party plugin that registers ``name`` of ``kind`` ("models", ...), if any."""
    for plugin in first_party_plugins():
        if name in plugin.get(kind, ()):
            return plugin["name"]
    return None
