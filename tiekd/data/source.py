"""Where an experiment's data comes from: the `data:` setting of an experiment file.

    data: {multi30k: DIR}           Multi30k (DIR optional; as the top-level `multi30k:` key)
    data: {folder: DIR}             a folder laid out like Multi30k: train.<lang>, val.<lang> (or
                                    valid.<lang>) and any number of test_<name>.<lang> pairs
    data:                           your own files; each split is [SOURCE, TARGET] or one TSV file
      train: corpus.tsv
      valid: [dev.de, dev.en]
      tests: {news: [news.de, news.en], web: web.tsv, newstest2014: {sacrebleu: wmt14}}
                                    ({sacrebleu: NAME}: sacreBLEU's test set NAME from its cache,
                                    tiekd/data/sacrebleu_sets.py)
    data: {prepared: DIR}           a folder written by `tiekd prepare`
    data:                           a Hugging Face `datasets` corpus of the WMT schema (rows
      hf_dataset: wmt14             {"translation": {"de": ..., "en": ...}}): a name load_dataset
      config: de-en                 knows (internet or its cache), or a local folder (save_to_disk's,
      train: train                  or files load_dataset reads); the split names default to train,
      valid: validation             validation and, as test sets, every other split
      tests: {newstest2014: test}

Paths are read relative to the current folder, like every other path of an experiment file. Each test
set of a folder form is named by its file stem (`test_mine.de` -> `test_mine`).

`check()` looks at every file before any stage starts: it exists, is readable, and its first lines
parse (valid UTF-8; a TSV line holds exactly one tab). Reading every line stays with `prepare`, which
runs first anyway, so that a multi-GB corpus is read once.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config_fields import NO_VALUE, Problem
from ..errors import TiekdError
from . import multi30k

FORMS = ("multi30k", "folder", "train", "prepared", "hf_dataset")  # the key that picks the form
HF_KEYS = ("hf_dataset", "config", "train", "valid", "tests")
FILE_KEYS = ("train", "valid", "tests")
POOLED = "pooled"  # the report's name for every test set together; no test set may take it
FIRST_LINES = 5    # lines of each file read by the early check
_TEST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Split = "tuple[Path, Path] | Path"  # a pair of aligned files, or one TSV file


@dataclass
class DataSource:
    """One resolved `data:` setting.

    `kind` is multi30k, folder, files, prepared or hf_dataset; `path` the folder of the folder forms;
    `splits` maps each split (train, valid, then the test sets) to a (source, target) pair or a TSV path,
    or for a dataset to (name, config, its split); `dataset` is the opened dataset.
    `key_of(split)` is the path of keys where the user wrote that split, for file:line in errors."""

    kind: str
    path: Path | None = None
    splits: dict = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # files of a folder form that no split uses
    dataset: object = None                             # the DatasetDict of an hf_dataset source

    @property
    def test_names(self) -> list[str]:
        return [name for name in self.splits if name not in ("train", "valid")]

    @property
    def names_its_tests(self) -> bool:
        """Whether the default test_sets are all of this data's tests (Multi30k keeps test_2016_flickr)."""
        return self.kind != "multi30k"

    @property
    def name(self) -> str:
        """A short name for report titles: Multi30k, or the folder the data (its training file) is in."""
        if self.kind == "multi30k":
            return "Multi30k"
        if self.kind == "hf_dataset":
            return Path(self.splits["train"][0]).name
        train = self.splits["train"]
        return (self.path or (train if isinstance(train, Path) else train[0]).resolve().parent).name

    def key_of(self, split: str) -> tuple:
        if self.kind in ("files", "hf_dataset"):
            return ("data", split) if split in ("train", "valid") else ("data", "tests", split)
        return ("data", self.kind) if self.kind != "multi30k" else ("data", "multi30k")


def read_source(data: dict | None, multi30k_dir: str | None, src_lang: str, tgt_lang: str) -> DataSource:
    """Resolve the experiment's `data:` mapping (or, without one, the `multi30k:` key) into files.

    Raises `DataProblem` for a setting that names no usable data; files are only looked up here
    (`check` opens them)."""
    if data is None:
        return _multi30k(multi30k_dir, src_lang, tgt_lang, ("multi30k",))
    if not isinstance(data, dict):
        raise DataProblem(Problem("data", data, "must be a mapping", "write e.g. `data: {folder: corpus/}` or "
                                  "`data: {train: train.tsv, valid: [dev.de, dev.en]}`"), ("data",))
    valid_keys = ["multi30k", "folder", "prepared", "hf_dataset", "config", *FILE_KEYS]
    for key in data:
        if key not in valid_keys:
            from ..config_fields import unknown_key_problem

            raise DataProblem(unknown_key_problem(str(key), valid_keys), ("data", key), label="data")
    forms = [key for key in FORMS if key in data]
    if "hf_dataset" in data:  # its train/valid/tests name splits of the dataset, not files
        forms = ["hf_dataset"]
    if len(forms) != 1:
        what = "names no data" if not forms else f"names {' and '.join(forms)} at once"
        raise DataProblem(Problem("data", NO_VALUE, what, "give exactly one of multi30k, folder, prepared, or "
                                  "train with valid (and tests)"), ("data",), label="data")
    form = forms[0]
    if multi30k_dir is not None:
        raise DataProblem(Problem("multi30k", multi30k_dir, "is given beside `data:`",
                                  "move it into `data: {multi30k: ...}` or drop one of them"), ("multi30k",))
    if form != "train":
        extra = [key for key in data if key != form and not (form == "hf_dataset" and key in HF_KEYS)]
        if extra:
            raise DataProblem(Problem(f"data.{extra[0]}", NO_VALUE, f"does not go with data.{form}",
                                      f"drop it; data.{form} brings its own splits"), ("data", extra[0]),
                              label=f"data.{extra[0]}")
    if form == "multi30k":
        return _multi30k(data["multi30k"], src_lang, tgt_lang, ("data", "multi30k"))
    if form == "folder":
        return _folder(data["folder"], src_lang, tgt_lang)
    if form == "prepared":
        return _prepared(data["prepared"], src_lang, tgt_lang)
    if form == "hf_dataset":
        return _hf_dataset(data, src_lang, tgt_lang)
    return _files(data, src_lang, tgt_lang)


class DataProblem(TiekdError):
    """A problem of the `data:` setting, with the path of keys where it was written."""

    def __init__(self, problem: Problem, path: tuple, label: str | None = None):
        self.problem, self.path = problem, path
        self.label = label or ".".join(str(p) for p in path)
        super().__init__(problem.describe(self.label))


def _path(value, keys: tuple) -> Path:
    if not isinstance(value, (str, Path)) or not str(value):
        raise DataProblem(Problem(".".join(map(str, keys)), value, "must be a path", "write a file or folder path"),
                          keys)
    return Path(value)


def _multi30k(value, src_lang: str, tgt_lang: str, keys: tuple) -> DataSource:
    folder = multi30k.find_multi30k(None if value is None else _path(value, keys))
    files, ignored = multi30k.folder_files(folder, src_lang, tgt_lang)
    return DataSource("multi30k", folder, files, ignored)


def _folder(value, src_lang: str, tgt_lang: str) -> DataSource:
    keys = ("data", "folder")
    folder = _path(value, keys)
    if not folder.is_dir():
        raise DataProblem(Problem("data.folder", str(value), "no such folder",
                                  "give the folder that holds train.<lang>, val.<lang> and test_<name>.<lang>"), keys)
    try:
        files, ignored = multi30k.folder_files(folder, src_lang, tgt_lang)
    except TiekdError as exc:
        raise DataProblem(Problem("data.folder", str(value), str(exc).rstrip("."), "see above"), keys) from None
    return DataSource("folder", folder, files, ignored)


def _prepared(value, src_lang: str, tgt_lang: str) -> DataSource:
    from .prepare import load_prepared

    keys = ("data", "prepared")
    folder = _path(value, keys)
    try:
        prepared = load_prepared(folder)
    except TiekdError as exc:
        raise DataProblem(Problem("data.prepared", str(value), str(exc), "see above"), keys) from None
    langs = (prepared.src_lang, prepared.tgt_lang)
    if langs != (src_lang, tgt_lang):
        raise DataProblem(Problem("data.prepared", str(value), f"holds {langs[0]}->{langs[1]} data, the experiment "
                                  f"is {src_lang}->{tgt_lang}", f"set src_lang: {langs[0]} and tgt_lang: "
                                  f"{langs[1]}, or prepare the other direction"), keys)
    return DataSource("prepared", folder, dict(prepared.splits))


def open_hf_dataset(name: str, config: str | None):
    """The DatasetDict of `name`: a folder written by `save_to_disk`, or whatever `load_dataset` reads
    (a local folder of data files, or a dataset name, from the internet or the Hugging Face cache)."""
    try:
        import datasets
    except ImportError:
        raise TiekdError("data.hf_dataset needs the `datasets` package. Fix: pip install datasets") from None
    path = Path(name)
    if (path / "dataset_dict.json").is_file():
        return datasets.load_from_disk(str(path))
    return datasets.load_dataset(name, config) if config else datasets.load_dataset(name)


def _hf_dataset(data: dict, src_lang: str, tgt_lang: str) -> DataSource:
    """A `datasets` corpus: its splits, checked for the WMT schema on their first row (the rows are read
    when the data is prepared)."""
    keys = ("data", "hf_dataset")
    name, config = str(data["hf_dataset"]), data.get("config")
    if ("/" in name and name.startswith(("/", "./", "../", "~"))) and not Path(name).expanduser().exists():
        raise DataProblem(Problem("data.hf_dataset", name, "no such folder", "give the folder of a saved dataset "
                                  "(save_to_disk) or of its data files, or a dataset name"), keys)
    try:
        found = open_hf_dataset(name, config)
    except TiekdError:
        raise
    except Exception as exc:  # datasets raises many kinds: not found, no network, a bad config
        raise DataProblem(Problem("data.hf_dataset", name, f"could not be loaded ({type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]})", "give a dataset name that load_dataset "
                                  "knows (with its config), or a local folder; offline, the dataset must be in "
                                  "the Hugging Face cache"), keys) from None
    train, valid = str(data.get("train", "train")), str(data.get("valid", "validation"))
    tests = data.get("tests")
    if tests is None:
        tests = {split: split for split in found if split not in (train, valid)}
    if not isinstance(tests, dict):
        raise DataProblem(Problem("data.tests", tests, "must map test-set names to splits of the dataset",
                                  "write e.g. `tests: {newstest2014: test}`"), ("data", "tests"))
    splits = {"train": train, "valid": valid, **{str(k): str(v) for k, v in tests.items()}}
    for split, dataset_split in splits.items():
        key = ("data", split) if split in ("train", "valid") else ("data", "tests", split)
        if dataset_split not in found:
            raise DataProblem(Problem(".".join(key), dataset_split, f"is not a split of {name} (it has "
                                      f"{', '.join(found)})", "name one of those splits"), key)
        row = found[dataset_split][0] if len(found[dataset_split]) else {}
        pair = row.get("translation") if isinstance(row, dict) else None
        if not isinstance(pair, dict) or src_lang not in pair or tgt_lang not in pair:
            raise DataProblem(Problem(".".join(key), dataset_split, f"its rows are not {{'translation': "
                                      f"{{'{src_lang}': ..., '{tgt_lang}': ...}}}} (the first is {str(row)[:120]})",
                                      "use a translation dataset of this language pair, or set src_lang / "
                                      "tgt_lang to its languages"), key)
    return DataSource("hf_dataset", None, {split: (name, config, dataset_split) for split, dataset_split
                                           in splits.items()}, dataset=found)


def export_hf_splits(source: "DataSource", folder: Path, src_lang: str, tgt_lang: str,
                     names: list[str]) -> dict[str, tuple[Path, Path]]:
    """Write the splits `names` of a `datasets` source as aligned text files in `folder`, a row at a time
    (Arrow tables are memory-mapped: the corpus is never held as Python objects), whole or not at all."""
    from .. import writes

    files = {}
    for name in names:
        _, _, dataset_split = source.splits[name]
        paths = (folder / f"{name}.{src_lang}", folder / f"{name}.{tgt_lang}")
        rows = source.dataset[dataset_split]
        with writes.atomic_stream(paths[0]) as sources, writes.atomic_stream(paths[1]) as targets:
            for batch in rows.iter(batch_size=10_000):
                for pair in batch["translation"]:
                    sources.write(" ".join(str(pair[src_lang]).split()) + "\n")
                    targets.write(" ".join(str(pair[tgt_lang]).split()) + "\n")
        files[name] = paths
    return files


def _files(data: dict, src_lang: str, tgt_lang: str) -> DataSource:
    if "valid" not in data:
        raise DataProblem(Problem("data.valid", NO_VALUE, "is missing",
                                  "add `valid: [DEV.src, DEV.tgt]` or `valid: dev.tsv` (training picks "
                                  "checkpoints on it)"), ("data",), label="data")
    splits = {name: _split(data[name], ("data", name)) for name in ("train", "valid")}
    tests = data.get("tests") or {}
    if not isinstance(tests, dict):
        raise DataProblem(Problem("data.tests", tests, "must be a mapping of test-set names",
                                  "write e.g. `tests: {news: [news.de, news.en], web: web.tsv}`"), ("data", "tests"))
    for name, value in tests.items():
        name = str(name)
        if not _TEST_NAME.match(name) or name in ("train", "valid", POOLED):
            raise DataProblem(Problem(f"data.tests.{name}", NO_VALUE, f"{name!r} cannot name a test set",
                                      f"use letters, digits, '_', '-' or '.', other than train, valid and "
                                      f"{POOLED}"), ("data", "tests", name))
        splits[name] = (_sacrebleu_split(value, src_lang, tgt_lang, ("data", "tests", name))
                        if isinstance(value, dict) else _split(value, ("data", "tests", name)))
    return DataSource("files", None, splits)


def _sacrebleu_split(value: dict, src_lang: str, tgt_lang: str, keys: tuple) -> tuple[Path, Path]:
    """A test set given by sacreBLEU's name (`{sacrebleu: wmt14}`): its cached source and reference files."""
    from .sacrebleu_sets import sacrebleu_test_files

    label = ".".join(map(str, keys))
    if set(value) != {"sacrebleu"}:
        raise DataProblem(Problem(label, value, "must be [SOURCE, TARGET], one TSV file or {sacrebleu: NAME}",
                                  "write e.g. {sacrebleu: wmt14} (sacreBLEU's test set of that name)"), keys)
    try:
        return sacrebleu_test_files(str(value["sacrebleu"]), src_lang, tgt_lang)
    except TiekdError as exc:
        message, _, fix = str(exc).partition(" Fix: ")
        message = message.rstrip(".")
        raise DataProblem(Problem(label, value["sacrebleu"], message, fix or "give the test set's files"), keys) \
            from None


def _split(value, keys: tuple):
    label = ".".join(map(str, keys))
    if isinstance(value, (str, Path)):
        return _path(value, keys)
    if isinstance(value, list) and len(value) == 2:
        return _path(value[0], keys), _path(value[1], keys)
    raise DataProblem(Problem(label, value, "must be [SOURCE, TARGET] or one TSV file",
                              "write e.g. [dev.de, dev.en] or dev.tsv"), keys)


def check(source: DataSource, splits: list[str]) -> list[DataProblem]:
    """Problems of the files of `splits` (train, valid and the chosen test sets): each must exist, be
    readable, and its first lines parse. Prepared folders were checked when read."""
    if source.kind in ("prepared", "hf_dataset"):  # checked when read (a dataset: its first rows)
        return []
    problems = []
    for name in splits:
        files = source.splits[name]
        for path in (files,) if isinstance(files, Path) else files:
            message = first_lines_problem(path, tsv=isinstance(files, Path))
            if message:
                key = source.key_of(name)
                problems.append(DataProblem(Problem(".".join(map(str, key)), NO_VALUE, message, _fix(message)),
                                            key))
    return problems


def first_lines_problem(path: Path, tsv: bool) -> str | None:
    """What is wrong with the start of `path` (a text file, a TSV of pairs when `tsv`), or None."""
    if not path.exists():
        return f"{path}: no such file (paths are read relative to the current folder)"
    if not path.is_file():
        return f"{path}: is not a file"
    try:
        with open(path, "rb") as f:
            head = list(itertools.islice(f, FIRST_LINES))
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror})"
    if not any(line.strip() for line in head):
        return f"{path}: starts with no text (empty file?)"
    for number, raw in enumerate(head, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            if number == len(head) and len(raw) > 4 and not raw.endswith(b"\n"):
                continue  # a file shorter than expected may end inside a character only when cut; prepare tells
            return f"{path}:{number}: not UTF-8 text"
        if tsv and line.strip() and line.count("\t") != 1:
            return (f"{path}:{number}: a TSV line needs exactly one tab (source<TAB>target), "
                    f"this one has {line.count(chr(9))}")
    return None


def _fix(message: str) -> str:
    if "no such file" in message:
        return "correct the path, or create the file"
    if "tab" in message:
        return "write each pair as source, one tab, target; or give two files as [SOURCE, TARGET]"
    if "UTF-8" in message:
        return "re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 IN > OUT`)"
    return "pass a readable UTF-8 text file with one sentence (or pair) a line"


def head_slice(files, count: int, folder: Path, name: str):
    """The first `count` pairs of a split written into `folder` (streamed: the input is never held
    whole), as the same kind of split (a pair of files or a TSV)."""
    folder.mkdir(parents=True, exist_ok=True)
    from ..io import atomic_write_text

    if isinstance(files, Path):
        with open(files, encoding="utf-8", newline="") as f:
            lines = list(itertools.islice(f, count))
        target = folder / f"{name}.tsv"
        atomic_write_text(target, "".join(_with_newline(line) for line in lines))
        return target
    written = []
    for side, path in zip(("src", "tgt"), files):
        with open(path, encoding="utf-8", newline="") as f:
            lines = list(itertools.islice(f, count))
        target = folder / f"{name}.{side}{path.suffix}"
        atomic_write_text(target, "".join(_with_newline(line) for line in lines))
        written.append(target)
    return tuple(written)


def _with_newline(line: str) -> str:
    return line if line.endswith("\n") else line + "\n"
