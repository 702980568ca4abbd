"""The layers of sdk/ (docs/ARCHITECTURE.md, section 1): a module imports modules of its own
layer or of lower ones, never of a higher one, and no modules import each other in a cycle.
Read with ast, so nothing is imported and an import inside a function counts as any other."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. "pkg.*" is a package and everything in it; any other name is that module
# alone (sdk/hubs is split: what a hub is sits low, publishing to one with the commands).
Layers = tuple[tuple[str, tuple[str, ...]], ...]  # (name, modules), lowest first

LAYERS: Layers = (
    ("core", ("sdk", "sdk.errors", "sdk.hookspecs", "sdk.specs", "sdk.config", "sdk.folders",
              "sdk.catalogue", "sdk.compat")),
    ("registry", ("sdk.registry", "sdk.plugins", "sdk.options")),
    ("parts", ("sdk.plugin_check", "sdk.templates.*", "sdk.data.*", "sdk.models.*",
               "sdk.runs.*", "sdk.eval.*", "sdk.hubs", "sdk.hubs.repo_id", "sdk.hubs.local",
               "sdk.hubs.huggingface", "sdk.hubs.modelscope")),
    ("tuners", ("sdk.tuners.*",)),
    # what uses a checkpoint: below training, which ends by predicting and pushing
    ("checkpoint users", ("sdk.infer.*", "sdk.export", "sdk.export_gguf", "sdk.ollama",
                          "sdk.hubs.push", "sdk.hubs.push_callback", "sdk.hubs.card")),
    ("training", ("sdk.train.*",)),
    # the conformance kit: checks that train and reload, for plugins' tests
    ("kit", ("sdk.testing",)),
    # `sdk web-ui`: runs the commands; reads run folders, loss logs and checkpoints
    ("web ui", ("sdk.webui.*",)),
    ("cli", ("sdk.cli", "sdk.__main__")),
)


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    file: Path
    line: int

    def where(self, root: Path) -> str:
        return f"{self.file.relative_to(root)}:{self.line}"


def find_modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of ``package`` under ``root`` by dotted name (a package by its own)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def find_imports(modules: dict[str, Path]) -> list[Import]:
    """The imports of one module of ``modules`` by another, wherever in the file they are;
    ``from P import name`` counts as an import of the module ``P.name`` if there is one,
    else of ``P``."""
    found = []
    for importer, path in modules.items():
        package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the importer's package, a level up a dot
                    parts = package.split(".")
                    start = ".".join(parts[:len(parts) - node.level + 1])
                    base = f"{start}.{base}" if base else start
                names = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                while name and name not in modules:
                    name = name.rpartition(".")[0]
                if name and name != importer:
                    found.append(Import(importer, name, path, node.lineno))
    return list(dict.fromkeys(found))  # `from m import a, b` is one import of m


def layer_of(module: str, layers: Layers) -> int | None:
    """The index of ``module``'s layer: its own entry, else its nearest package's ``.*``."""
    for name in [module, *(module.rsplit(".", n)[0] for n in range(1, module.count(".") + 1))]:
        for index, (_, entries) in enumerate(layers):
            if module == name and name in entries or f"{name}.*" in entries:
                return index
    return None


def unassigned(modules: dict[str, Path], layers: Layers, root: Path) -> list[str]:
    return [f"{path.relative_to(root)}: {module} is in no layer" for module, path in
            modules.items() if layer_of(module, layers) is None]


def upward_imports(imports: list[Import], layers: Layers, root: Path) -> list[str]:
    problems = []
    for found in imports:
        low, high = layer_of(found.importer, layers), layer_of(found.imported, layers)
        if low is not None and high is not None and high > low:
            problems.append(f"{found.where(root)}: {found.importer} (layer {layers[low][0]}) "
                            f"imports {found.imported} (layer {layers[high][0]}, higher)")
    return problems


def import_cycles(imports: list[Import], root: Path) -> list[str]:
    """One cycle through each group of modules that import each other, with where each
    import is (Tarjan's strongly connected components)."""
    edges: dict[str, dict[str, Import]] = {}
    for found in imports:
        edges.setdefault(found.importer, {}).setdefault(found.imported, found)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in edges.get(module, {}):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = set()
            while not group or module not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return [describe_cycle(min(group), group, edges, root) for group in groups]


def describe_cycle(start: str, group: set[str], edges: dict[str, dict[str, Import]],
                   root: Path) -> str:
    # breadth first from start back to it, within the group: the shortest such cycle
    came_from: dict[str, Import] = {}
    frontier = [start]
    while start not in came_from:
        reached = []
        for module in frontier:
            for other, found in edges.get(module, {}).items():
                if other in group and other not in came_from:
                    came_from[other] = found
                    reached.append(other)
        frontier = reached
    steps, module = [], start
    while True:
        found = came_from[module]
        steps.append(f"{found.importer} imports {found.imported} ({found.where(root)})")
        module = found.importer
        if module == start:
            break
    return "import cycle: " + "; ".join(reversed(steps))


def check(root: Path, package: str, layers: Layers) -> list[str]:
    modules = find_modules(root, package)
    imports = find_imports(modules)
    return [*unassigned(modules, layers, root), *upward_imports(imports, layers, root),
            *import_cycles(imports, root)]


def test_sdk_keeps_its_layers():
    problems = check(ROOT, "sdk", LAYERS)
    assert not problems, "\n".join(problems)


def test_the_check_finds_an_upward_import_a_cycle_and_a_module_in_no_layer(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    files = {
        "__init__.py": "",
        "base.py": "import os\n",
        "low.py": "from pkg import base\n\n\ndef later():\n    from pkg.high import run\n",
        "high.py": "from .low import later\nimport pkg.base\n",
        "stray.py": "",
    }
    for name, text in files.items():
        (package / name).write_text(text)
    layers = (("bottom", ("pkg", "pkg.base", "pkg.low")), ("top", ("pkg.high",)))

    assert check(tmp_path, "pkg", layers) == [
        "pkg/stray.py: pkg.stray is in no layer",
        "pkg/low.py:5: pkg.low (layer bottom) imports pkg.high (layer top, higher)",
        "import cycle: pkg.high imports pkg.low (pkg/high.py:1); "
        "pkg.low imports pkg.high (pkg/low.py:5)",
    ]
    (package / "low.py").write_text("from pkg import base\n")
    (package / "stray.py").unlink()
    assert check(tmp_path, "pkg", layers) == []


def test_a_package_entry_covers_its_modules_and_no_other_name():
    layers = (("a", ("x.y.*",)), ("b", ("x.y.z", "x")))
    assert layer_of("x.y", layers) == 0
    assert layer_of("x.y.w.v", layers) == 0
    assert layer_of("x.y.z", layers) == 1  # its own entry first
    assert layer_of("x", layers) == 1
    assert layer_of("x.q", layers) is None  # "x" is the module alone
    assert layer_of("x.yy", layers) is None
