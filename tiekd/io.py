"""Small file helpers: reading text and hashing files. Writing goes through tiekd.writes (re-exported
here for the modules that read and write), so that every write follows one discipline."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from .writes import (  # noqa: F401  (re-exported: every write goes through tiekd.writes)
    atomic_write_bytes, atomic_write_json, atomic_write_text, fsync_dir, replace_dir,
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


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
