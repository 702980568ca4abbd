"""What the tests of the remote hubs (test_hub_*.py) share: a repo's content, and folders."""

from pathlib import Path

MODEL_FILES = {"config.json": b'{"a": 1}', "weights/model.bin": b"\0" * 64,
               "README.md": b"# tiny", "tokenizer/vocab.txt": b"a\nb\n"}


def files_in(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def model_folder(tmp_path: Path) -> Path:
    """A folder to push, beside the hub fixture's home (also under tmp_path)."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    return folder
