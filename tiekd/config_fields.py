"""Dataclass fields that carry their own documentation and limits, and the checks that read them.

A configuration field is declared once, with `setting(default, help, ...)`; the CLI builds its flag
and `--help` text from it, and `field_problem` checks a value against it:

    lr: float = setting(7e-4, "peak learning rate", bounds="> 0")
    dropout: float | None = setting(None, "dropout rate when set", bounds="[0, 1)")
    method: str = setting("none", "KD method", choices=KD_METHODS, distill_only=True)

`bounds` is written as it reads in a paper: "> 0", ">= 1", "[0, 1)", "(0, 1]". A problem found is a
`Problem` (key, value, what is wrong, the fix); `InvalidConfig` gathers them, and each caller names
the keys the way its user wrote them (a `--flag`, a `file:line: key`, an experiment row).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path

import yaml

from .errors import TiekdError


def setting(default, help: str, *, bounds: str | None = None, choices: tuple[str, ...] | None = None,
            pattern: tuple[str, str] | None = None, distill_only: bool = False):
    """A dataclass field whose metadata holds its help, allowed values and whether only `tiekd distill` has it.

    `pattern` is (regular expression, the same in words), for values that are not a closed list."""
    if bounds is not None:
        Bounds.parse(bounds)  # a malformed bound fails at import, not at the first check
    metadata = {"help": help, "bounds": bounds, "choices": choices, "pattern": pattern, "distill_only": distill_only}
    return dataclasses.field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Bounds:
    """An interval of allowed numbers; None leaves that side unbounded."""

    low: float | None
    high: float | None
    low_closed: bool
    high_closed: bool
    text: str

    @classmethod
    def parse(cls, text: str) -> "Bounds":
        """ "> 0", ">= 1", "<= 1", "[0, 1)", "(0, 1]" ... -> Bounds."""
        number = r"-?\d+(?:\.\d*)?(?:e-?\d+)?"
        if match := re.fullmatch(rf"(>=|>|<=|<)\s*({number})", text.strip()):
            sign, value = match.group(1), float(match.group(2))
            if sign.startswith(">"):
                return cls(value, None, sign == ">=", False, text)
            return cls(None, value, False, sign == "<=", text)
        if match := re.fullmatch(rf"([\[(])\s*({number})\s*,\s*({number})\s*([\])])", text.strip()):
            return cls(float(match.group(2)), float(match.group(3)), match.group(1) == "[", match.group(4) == "]", text)
        raise ValueError(f"bounds {text!r}: write e.g. '> 0', '>= 1' or '[0, 1)'")

    def __contains__(self, value: float) -> bool:
        if value != value:  # NaN compares false with everything, so it would slip through the tests below
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_closed)):
            return False
        return self.high is None or value < self.high or (value == self.high and self.high_closed)

    def describe(self) -> str:
        return f"in {self.text}" if self.text[0] in "[(" else self.text


NO_VALUE = object()  # a Problem about a key itself (an unknown key), not about its value


@dataclass(frozen=True)
class Problem:
    """One wrong setting: `key` (a field name) holds `value`; `wrong` says why, `fix` what to do."""

    key: str
    value: object
    wrong: str
    fix: str

    def describe(self, name: str) -> str:
        """The problem as a sentence, with the key named as the user wrote it (`name`; for a problem
        about the key itself, where it was written)."""
        if self.value is NO_VALUE:
            return f"{name}: {self.wrong}. Fix: {self.fix}" if name else f"{self.wrong}. Fix: {self.fix}"
        shown = "(not set)" if self.value in ("", None) else repr(self.value)
        return f"{name} {shown}: {self.wrong}. Fix: {self.fix}"


class InvalidConfig(TiekdError):
    """Every problem of a configuration at once, each key named by `name_of(key)` (default: the key), or
    by `name_of(key, with_key=False)`, where it was written, for a problem about the key itself."""

    def __init__(self, problems: list[Problem], name_of=None, what: str = "run configuration"):
        self.problems = problems
        self.what = what
        name_of = name_of or (lambda key, with_key=True: key if with_key else "")
        lines = [problem.describe(name_of(problem.key, with_key=problem.value is not NO_VALUE)) for problem in problems]
        super().__init__(problems_message(what, lines))

    def renamed(self, name_of) -> "InvalidConfig":
        """The same problems with the keys named by `name_of` (a flag, a file and line)."""
        return InvalidConfig(self.problems, name_of, self.what)


def problems_message(what: str, lines: list[str]) -> str:
    """One problem on the error's line; several one per line below it."""
    if len(lines) == 1:
        return f"invalid {what}: {lines[0]}"
    return f"invalid {what} ({len(lines)} problems):\n  " + "\n  ".join(lines)


def field_problem(field: dataclasses.Field, kind, value) -> Problem | None:
    """What is wrong with `value` for `field` of type `kind` (a resolved annotation), or None."""
    meta = field.metadata
    if field.default is None:
        default = "or leave it unset"
    else:
        default = "see --help" if field.default == "" else f"the default is {field.default!r}"
    if not _has_type(kind, value):
        found = type(value).__name__
        hint = ""
        if isinstance(value, str) and _is_number(value):  # YAML 1.1 reads 7e-4 (no decimal point) as text
            hint = f" (YAML reads {value} as text: write {float(value)!r})"
        return Problem(field.name, value, f"must be {_type_name(kind)}, not {found}{hint}",
                       f"write {_type_name(kind)}; {default}")
    if meta.get("choices") and value not in meta["choices"]:
        close = difflib.get_close_matches(str(value), meta["choices"], n=1)
        return Problem(field.name, value, f"must be one of {', '.join(meta['choices'])}",
                       f"use {close[0]!r}" if close else "use one of those")
    if meta.get("pattern") and not re.fullmatch(meta["pattern"][0], value):
        return Problem(field.name, value, f"must be {meta['pattern'][1]}", f"use {meta['pattern'][1]}")
    if meta.get("bounds") and value is not None:
        bounds = Bounds.parse(meta["bounds"])
        numbers = value if isinstance(value, (list, tuple)) else [value]
        if not all(number in bounds for number in numbers):
            each = "each " if isinstance(value, (list, tuple)) else ""
            return Problem(field.name, value, f"{each}must be {bounds.describe()}",
                           f"use {'values' if each else 'a value'} {bounds.describe()}; {default}")
    return None


def _has_type(kind, value) -> bool:
    """isinstance for the annotations configurations use: bool, int, float, str, X | None, tuple[X, X]."""
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:  # an int is a float too (`lr: 1`), a bool is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    args = typing.get_args(kind)
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        return any(_has_type(arg, value) for arg in args)
    if typing.get_origin(kind) is tuple:
        return (isinstance(value, (list, tuple)) and len(value) == len(args)
                and all(_has_type(arg, item) for arg, item in zip(args, value)))
    return value is None if kind is type(None) else isinstance(value, kind)


def _type_name(kind) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text", type(None): "null"}
    if kind in names:
        return names[kind]
    args = typing.get_args(kind)
    if typing.get_origin(kind) is tuple:
        return f"a list of {len(args)} numbers"
    return " or ".join(_type_name(arg) for arg in args)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def unknown_key_problem(key: str, valid: list[str]) -> Problem:
    """A key that is no field: suggest the closest one (a typo, usually), and list the valid ones."""
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return Problem(key, NO_VALUE, f"unknown key {key!r}", f"{hint}Use only these keys: {', '.join(valid)}")


def yaml_key_lines(path: str | Path) -> dict[tuple, int]:
    """1-based line of every mapping key and list item in a YAML file, by its path of keys and indices:
    {("lr",): 3, ("students", 1, "options", "topk"): 17, ...}. Empty when the file cannot be read."""
    try:
        root = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    lines: dict[tuple, int] = {}

    def walk(node, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                lines[prefix + (key_node.value,)] = key_node.start_mark.line + 1
                walk(value_node, prefix + (key_node.value,))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[prefix + (index,)] = item.start_mark.line + 1
                walk(item, prefix + (index,))

    walk(root, ())
    return lines
