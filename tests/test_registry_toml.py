"""registry.toml matches what the first-party plugins really register."""

import tomllib

from conftest import REPO
from sdk.plugins import load_plugins

KINDS = ("models", "datasets", "templates", "tuners", "hubs", "formats")


def test_registry_toml_matches_the_plugins():
    catalogue = tomllib.loads((REPO / "registry.toml").read_text())["plugin"]
    plugins = load_plugins()
    plugins.registry  # noqa: B018 - calling the hooks fills in what each plugin registered
    assert sorted(p.name for p in (REPO / "plugins").iterdir() if p.is_dir()) == sorted(
        entry["name"] for entry in catalogue)
    for entry in catalogue:
        assert (REPO / entry["path"] / "pyproject.toml").is_file()
        registered = plugins.info[entry["name"]].registered
        declared = {kind: sorted(entry.get(kind, [])) for kind in KINDS if entry.get(kind)}
        assert {kind: sorted(names) for kind, names in registered.items()} == declared
