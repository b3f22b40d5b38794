"""Reading and validating parallel text: two aligned files (one sentence a line) or one TSV of pairs.

Every problem is reported as a `TiekdError` naming the file, the 1-based line and the fix. Accepted and
normalised on the way in: CRLF endings (counted), a UTF-8 byte-order mark, whitespace around each
sentence, and stray line-break characters inside a line (\\r, \\f, \\x85, U+2028, ...), which are replaced by a
space (counted) so that every reader of the cleaned files, `str.splitlines` included, sees the same lines.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import TiekdError, input_error

# characters that Python's str.splitlines() or universal-newline reading would treat as a line end
_INNER_BREAKS = re.compile("[\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


@dataclass
class TextLines:
    """The lines of one UTF-8 text file, CRLF and stray line breaks already normalised (not stripped)."""

    path: Path
    lines: list[str]
    sha256: str
    crlf_lines: int = 0
    line_breaks_replaced: int = 0


@dataclass
class ParallelText:
    """Aligned sentence pairs of one split, empty pairs already skipped.

    `line_numbers[i]` is the 1-based input line of pair i, so later filters can still point at the input.
    """

    name: str
    sources: list[str]
    targets: list[str]
    line_numbers: list[int]
    inputs: dict  # {"source": {...}, "target": {...}} or {"tsv": {...}}: path, sha256, bytes
    read: int = 0  # pairs in the input, before skipping
    skipped_empty: int = 0
    crlf_lines: int = 0
    line_breaks_replaced: int = 0
    filtered: dict[str, int] = field(default_factory=dict)  # reason -> pairs removed (training split only)


def read_text_lines(path: str | Path) -> TextLines:
    """Read a UTF-8 text file as a list of lines, with clear errors for a missing, empty or non-UTF-8 file."""
    path = Path(path)
    if not path.exists():
        raise input_error(path, "no such file", "check the path (it is read relative to the current folder)")
    if path.is_dir():
        raise input_error(path, "is a folder, not a text file", "pass the text file itself")
    data = path.read_bytes()
    if not data.strip():
        raise input_error(path, "the file is empty (no text)", "pass the file that holds the sentences, one a line")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start:exc.end]
        raise input_error(
            path, f"invalid UTF-8 (byte {bad!r} at byte offset {exc.start - line_start} of the line, "
                  f"{exc.start} of the file)",
            "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`) or fix that line",
            line=line,
        ) from None
    if "\n" not in text and "\r" in text:
        raise input_error(path, "uses old Mac (CR-only) line endings", r"convert them, e.g. `tr '\r' '\n' < IN > OUT`")
    if text.startswith("\ufeff"):
        text = text[1:]
    raw_lines = text.split("\n")
    if raw_lines[-1] == "":  # the usual final newline, not an extra empty line
        raw_lines.pop()
    lines, crlf, replaced = [], 0, 0
    for line in raw_lines:
        if line.endswith("\r"):
            line = line[:-1]
            crlf += 1
        if _INNER_BREAKS.search(line):
            line = _INNER_BREAKS.sub(" ", line)
            replaced += 1
        lines.append(line)
    return TextLines(path, lines, hashlib.sha256(data).hexdigest(), crlf, replaced)


def file_record(text: TextLines) -> dict:
    """What meta.json records about an input file."""
    return {"path": str(text.path.resolve()), "sha256": text.sha256, "bytes": text.path.stat().st_size}


def read_parallel(source: str | Path, target: str | Path, *, name: str, empty: str = "skip") -> ParallelText:
    """Read two aligned files. Pairs with an empty side are skipped (`empty="skip"`) or an error."""
    src, tgt = read_text_lines(source), read_text_lines(target)
    if len(src.lines) != len(tgt.lines):
        longer, shorter = (src, tgt) if len(src.lines) > len(tgt.lines) else (tgt, src)
        raise input_error(
            longer.path,
            f"line {len(shorter.lines) + 1} has no partner: {src.path} has {len(src.lines)} lines but "
            f"{tgt.path} has {len(tgt.lines)} lines ({name} split)",
            "the source and target files must be aligned line by line; pass the matching pair of files",
            line=len(shorter.lines) + 1,
        )
    pairs = ParallelText(
        name, [], [], [], {"source": file_record(src), "target": file_record(tgt)}, read=len(src.lines),
        crlf_lines=src.crlf_lines + tgt.crlf_lines,
        line_breaks_replaced=src.line_breaks_replaced + tgt.line_breaks_replaced,
    )
    for number, (s, t) in enumerate(zip(src.lines, tgt.lines), start=1):
        s, t = s.strip(), t.strip()
        if not s or not t:
            if empty == "error":
                raise input_error(
                    src.path if not s else tgt.path, f"empty sentence ({name} split)",
                    "remove the pair from both files, or use --empty skip to skip such pairs", line=number,
                )
            pairs.skipped_empty += 1
            continue
        pairs.sources.append(s)
        pairs.targets.append(t)
        pairs.line_numbers.append(number)
    _check_not_all_empty(pairs, src.path)
    return pairs


def read_tsv(path: str | Path, *, name: str, empty: str = "skip") -> ParallelText:
    """Read `source<TAB>target` lines. A blank line counts as an empty pair; any other line needs one tab."""
    text = read_text_lines(path)
    pairs = ParallelText(
        name, [], [], [], {"tsv": file_record(text)}, read=len(text.lines), crlf_lines=text.crlf_lines,
        line_breaks_replaced=text.line_breaks_replaced,
    )
    for number, line in enumerate(text.lines, start=1):
        if line.strip():
            if line.count("\t") != 1:
                raise input_error(
                    text.path, f"expected exactly one tab (source<TAB>target), found {line.count(chr(9))}",
                    "write each pair as source, one tab, target; remove or escape other tabs in that line",
                    line=number,
                )
            s, t = (side.strip() for side in line.split("\t"))
        else:
            s = t = ""
        if not s or not t:
            if empty == "error":
                side = "both sides are" if not s and not t else f"the {'source' if not s else 'target'} side is"
                raise input_error(
                    text.path, f"{side} empty ({name} split)",
                    "remove that line, or use --empty skip to skip such pairs", line=number,
                )
            pairs.skipped_empty += 1
            continue
        pairs.sources.append(s)
        pairs.targets.append(t)
        pairs.line_numbers.append(number)
    _check_not_all_empty(pairs, text.path)
    return pairs


def _check_not_all_empty(pairs: ParallelText, path: Path) -> None:
    if not pairs.sources:
        raise TiekdError(
            f"{path}: no sentence pair left in the {pairs.name} split after skipping {pairs.skipped_empty} "
            "with an empty side. Fix: pass files with text on both sides"
        )
