"""User-facing errors.

A `TiekdError` carries a message that says what is wrong, where (file and line when known) and what
to do. The CLI prints it without a traceback (unless `--debug`) and exits with status 2.
"""

from __future__ import annotations

from pathlib import Path


class TiekdError(Exception):
    """An error the user can act on; the CLI shows only its message."""


def input_error(path: str | Path, problem: str, fix: str, line: int | None = None) -> TiekdError:
    """Build an error naming the file (and line), the problem and the fix.

    >>> str(input_error("a.de", "invalid UTF-8", "re-encode the file as UTF-8", line=3))
    'a.de:3: invalid UTF-8. Fix: re-encode the file as UTF-8'
    """
    where = f"{path}:{line}" if line is not None else f"{path}"
    return TiekdError(f"{where}: {problem}. Fix: {fix}")
