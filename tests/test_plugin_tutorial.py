"""docs/plugins.md, followed as a reader follows it, so that the page cannot rot.

The page's fenced blocks marked ``file=PATH`` are written (``append=PATH``: added to the end),
and its ``console`` blocks run in order: each ``$ `` line (continued by a trailing ``\\``) is
run by bash in the plugin's folder, with `sdk`, `python` and `pip` on PATH, and its stdout is
compared with the lines under it (runs of spaces count as one, as columns are as wide as the
longest entry of all installed plugins; ``...`` stands for any text, as in doctest).
The reader's environment is stood in for by a throwaway virtual environment that sees the
shared one, without network: pip neither downloads (no index, no build isolation) nor touches
the shared environment, and TOKENIZER is the stored Qwen2 tokenizer.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import REPO, TOKENIZERS

PAGE = REPO / "docs" / "plugins.md"
EXAMPLE = REPO / "examples" / "sft-plugin-acme"
FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```$", re.S | re.M)


def page_steps(text: str) -> list[tuple[str, str, str]]:
    """The page's steps in order: ("file"|"append", path, content) and ("run", command,
    expected stdout)."""
    steps = []
    for language, info, body in FENCE.findall(text):
        target = re.search(r"\b(file|append)=(\S+)", info)
        if target:
            steps.append((target[1], target[2], body))
        elif language == "console":
            steps.extend(console_steps(body))
    return steps


def console_steps(body: str) -> list[tuple[str, str, str]]:
    steps: list[tuple[str, str, str]] = []
    lines = iter(body.splitlines())
    for line in lines:
        if line.startswith("$ "):
            command = line[2:]
            while command.endswith("\\"):
                command = command[:-1] + next(lines).strip()
            steps.append(("run", command, ""))
        else:
            assert steps, f"output before any command in a console block:\n{body}"
            kind, command, expected = steps[-1]
            steps[-1] = (kind, command, expected + line + "\n")
    return steps


def normalized(text: str) -> str:
    return "\n".join(re.sub(r"[ \t]+", " ", line).rstrip() for line in text.strip().splitlines())


def matches(expected: str, actual: str) -> bool:
    pattern = ".*?".join(re.escape(part) for part in normalized(expected).split("..."))
    return re.fullmatch(pattern, normalized(actual), re.S) is not None


def reader_environment(tmp_path: Path) -> dict[str, str]:
    """A virtual environment of the reader's own that sees the shared one's packages."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # addsitedir, not a plain path: the shared environment's own .pth files (the editable
    # first-party plugins) must be read too.
    shared = sysconfig.get_paths()["purelib"]
    (Path(purelib) / "shared_env.pth").write_text(
        f"import site; site.addsitedir({shared!r})\n")
    for name in ["sdk", "pip"]:
        # -P: not the current folder first on sys.path, as for an installed script (else
        # `sdk` would import the plugin's source folder instead of the installed copy).
        script = venv / "bin" / name
        script.write_text(f'#!/bin/sh\nexec "{venv}/bin/python" -P -m {name} "$@"\n')
        script.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if key != "SFT_SDK_PLUGINS"}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", PYTHONPATH=str(REPO),
               TOKENIZER=str(TOKENIZERS / "qwen2"), HF_HUB_OFFLINE="1", PIP_NO_INDEX="1",
               PIP_NO_BUILD_ISOLATION="0", PIP_DISABLE_PIP_VERSION_CHECK="1",
               # deepspeed (in the shared environment for --deepspeed, not the reader's) warns on
               # stdout, when transformers imports it, unless told its accelerator
               DS_ACCELERATOR="cpu")
    env.pop("VIRTUAL_ENV", None)
    return env


def test_page_steps_are_read():
    """The parser finds what the page holds (a page whose blocks it missed would pass)."""
    steps = page_steps(PAGE.read_text())
    kinds = [kind for kind, _, _ in steps]
    assert kinds.count("run") >= 10 and "file" in kinds and "append" in kinds
    assert console_steps("$ echo a \\\n   b\na b\n") == [("run", "echo a b", "a b\n")]
    assert matches("x 1\n...\nz", "x    1\ny\nz  ") and not matches("x 2", "x 1")


def test_tutorial_as_written(tmp_path):
    if not (TOKENIZERS / "qwen2").is_dir():
        pytest.skip(f"no stored tokenizer at {TOKENIZERS / 'qwen2'}")
    env = reader_environment(tmp_path)
    folder = tmp_path / "sft-plugin-acme"
    folder.mkdir()
    written: set[str] = set()
    for kind, target, content in page_steps(PAGE.read_text()):
        if kind == "run":
            result = subprocess.run(["bash", "-c", target], cwd=folder, env=env,
                                    capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, f"$ {target}\n{result.stdout}\n{result.stderr}"
            # The page's packaging is the one setuptools has nothing to say about (a data folder
            # missing from `packages` is only a warning, and the wheel then lacks it).
            assert "pip wheel" not in target or "warning" not in result.stderr.lower(), \
                result.stderr
            assert matches(content, result.stdout), (
                f"$ {target}\n--- the page says:\n{content}--- it printed:\n{result.stdout}")
            continue
        path = folder / target
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a" if kind == "append" else "w") as file:
            file.write(("\n\n" if kind == "append" else "") + content)
        written.add(target)
    # The copy under examples/ is the page's plugin, file for file.
    shipped = {str(p.relative_to(EXAMPLE)) for p in EXAMPLE.rglob("*")
               if p.is_file() and not {"__pycache__", "build"} & set(p.parts)
               and ".egg-info" not in str(p)}
    assert shipped <= written, f"examples/sft-plugin-acme has files the page never writes: " \
                               f"{sorted(shipped - written)}"
    for name in sorted(shipped):
        assert (folder / name).read_text() == (EXAMPLE / name).read_text(), name
