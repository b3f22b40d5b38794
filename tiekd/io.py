"""Small file helpers: atomic writes so that a crash never leaves a half-written file behind."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush and fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, ensure_ascii=False) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: Path, target: Path) -> None:
    """Rename the finished folder `new` to `target`. An existing `target` is first renamed aside and
    deleted only once `new` is in place, so a crash at any point leaves one complete version."""
    new, target = Path(new), Path(target)
    if not target.exists():
        new.rename(target)
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    old.rmdir()
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def iter_lines(path: str | Path) -> Iterator[str]:
    """Lines of a UTF-8 text file, one at a time, without their line endings (LF or CRLF); errors name
    file and line. For corpora too large to hold as one list."""
    from .errors import input_error

    path = _text_file(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise input_error(
                    path, f"invalid UTF-8 (byte {exc.start + 1} of the line: {raw[exc.start:exc.start + 1]!r})",
                    "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`", line=number,
                ) from None
            yield line.removesuffix("\n").removesuffix("\r")


def count_lines(path: str | Path, block: int = 1 << 20) -> int:
    """How many lines `iter_lines` would give, from a binary read (a last line without a line end counts)."""
    lines, last = 0, b"\n"
    with open(_text_file(path), "rb") as handle:
        while data := handle.read(block):
            lines, last = lines + data.count(b"\n"), data[-1:]
    return lines + (last != b"\n")


def _text_file(path: str | Path) -> Path:
    from .errors import input_error

    path = Path(path)
    if not path.exists():
        raise input_error(path, "no such file", "check the path")
    if not path.is_file():
        raise input_error(path, "is not a regular file", "pass a text file with one sentence per line")
    return path


def read_lines(path: str | Path) -> list[str]:
    """Lines of a UTF-8 text file without their line endings (LF or CRLF); errors name file and line."""
    return list(iter_lines(path))
