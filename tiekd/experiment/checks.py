"""Check every run of an experiment (the teacher and each student row) before any stage starts.

A typo in the last student row used to surface only when that row's turn came, after the teacher
and the other rows had trained. Here each run's settings are built exactly as the pipeline builds
them (`ExperimentConfig.teacher_settings` / `student_settings`, with placeholder folders) and checked
by `RunConfig` itself, so the rules are the ones the run would meet. Problems name the experiment
file, the line, the row and the key where the user wrote it: a row's `options`, the shared
`student:` or `teacher:` settings, the row's `method`, `sizes` or `seeds`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config_fields import NO_VALUE, InvalidConfig, Problem, problems_message, unknown_key_problem, yaml_key_lines
from ..errors import TiekdError

# stand-ins for the folders the pipeline creates; the checks do not look inside them
DATA, TEACHER_MODEL, RUN = "<out>/data", "<out>/teacher/model", "<out>/run"


class _Report:
    """Problem texts in order, each once; a problem of the shared `student:` settings lists the rows it hits."""

    def __init__(self, source: str):
        self.source = source
        self.lines = yaml_key_lines(source) if Path(source).is_file() else {}
        self.rows: dict[str, list[str]] = {}

    def add(self, problem: Problem, path: tuple, label: str, row: str | None = None) -> None:
        line = self.lines.get(path)
        where = f"{self.source}:{line}: {label}" if line else f"{self.source}: {label}"
        rows = self.rows.setdefault(problem.describe(where), [])
        if row is not None and row not in rows:
            rows.append(row)

    def raise_if_any(self) -> None:
        if self.rows:
            texts = [text + (f" (row{'s' * (len(rows) > 1)} {', '.join(rows)})" if rows else "")
                     for text, rows in self.rows.items()]
            raise TiekdError(problems_message(f"experiment {self.source}; nothing was run", texts))


def check_experiment(config, source: str, check_data: bool = True) -> None:
    """Raise a TiekdError listing every problem of `config` (an ExperimentConfig read from `source`).
    `check_data=False` checks the settings only: the data may be a dataset name that would need the internet."""
    from ..config import RunConfig

    valid = [f.name for f in dataclasses.fields(RunConfig)]
    report = _Report(source)
    _check_shapes(config, report)
    report.raise_if_any()  # the runs below cannot even be built
    if check_data:
        _check_data(config, report)

    for section in ("teacher", "student"):
        for key in getattr(config, section):
            if key not in valid:
                report.add(unknown_key_problem(key, valid), (section, key), section)
    if not config.teacher_model:
        for problem in _run_problems(config.teacher_settings(DATA)):
            path = ("teacher", problem.key) if problem.key in config.teacher else ("teacher",)
            report.add(problem, path, f"teacher.{problem.key}")

    for i, spec in enumerate(config.students):
        row = f"students[{i}] ({spec.name})"
        for key in spec.options:
            if key not in valid:
                report.add(unknown_key_problem(key, valid), ("students", i, "options", key), f"{row} options")
        for _, size, seed in [run for run in config.student_runs() if run[0] is spec]:
            for problem in _run_problems(config.student_settings(spec, size, seed, DATA, TEACHER_MODEL)):
                path, label, shared = _student_origin(problem.key, config, spec, i)
                report.add(problem, path, label, row=spec.name if shared else None)
    report.raise_if_any()


def _check_shapes(config, report: _Report) -> None:
    """Mappings where settings go, lists where rows' sizes and seeds go, a name for every row."""
    def check(value, kind, path: tuple, label: str, what: str) -> None:
        if not isinstance(value, kind):
            report.add(Problem(label, value, f"must be {what}", f"write {what}"), path, label)

    check(config.teacher, dict, ("teacher",), "teacher", "a mapping of run settings (`key: value` lines)")
    check(config.student, dict, ("student",), "student", "a mapping of run settings (`key: value` lines)")
    check(config.student_sizes, list, ("student_sizes",), "student_sizes", "a list of model presets")
    check(config.seeds, list, ("seeds",), "seeds", "a list of seeds")
    if config.note is not None:
        check(config.note, str, ("note",), "note", "one line of text")
    if config.run_order not in ("rows", "seeds"):
        report.add(Problem("run_order", config.run_order, "must be rows or seeds",
                           "write rows (each row's seeds in turn) or seeds (every row's first seed first)"),
                   ("run_order",), "run_order")
    for key, what in (("bootstrap_resamples", "resamples"), ("randomization_trials", "trials")):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            report.add(Problem(key, value, "must be a whole number of at least 1",
                               f"write e.g. {getattr(type(config)(), key)} {what}"), (key,), key)
    for i, spec in enumerate(config.students):
        row = f"students[{i}]"
        check(spec.name, str, ("students", i, "name"), f"{row} name", "the row's label, e.g. TIE-KD")
        check(spec.options, dict, ("students", i, "options"), f"{row} options", "a mapping {key: value, ...}")
        if not isinstance(spec.baseline, (bool, str)) or spec.baseline == "":
            report.add(Problem(f"{row} baseline", spec.baseline, "must be true, false or a column label",
                               "write baseline: true (compare every row with this one), or the label of the "
                               "baseline it stands for, e.g. baseline: No-KD"), ("students", i, "baseline"),
                       f"{row} baseline")
        for key in ("sizes", "seeds"):
            if getattr(spec, key) is not None:
                check(getattr(spec, key), list, ("students", i, key), f"{row} {key}", "a list, or nothing")


def _check_data(config, report: _Report) -> None:
    """The data exists and starts as it should, and names every test set in `test_sets`; an unset
    `test_sets` becomes every test set the data names (Multi30k: test_2016_flickr, as before)."""
    from ..data.source import POOLED, DataProblem, check, read_source

    try:
        source = read_source(config.data, config.multi30k, config.src_lang, config.tgt_lang)
    except DataProblem as problem:
        report.add(problem.problem, problem.path, problem.label)
        return
    except TiekdError as error:  # Multi30k not found, or a Multi30k-shaped folder without a split
        key = ("data", "multi30k") if config.data else ("multi30k",)
        report.add(Problem(key[-1], NO_VALUE, str(error).split(". Fix: ")[0],
                           str(error).split(". Fix: ")[-1] if ". Fix: " in str(error) else "check the folder"),
                   key, ".".join(key))
        return
    if config.test_sets is None:
        config.test_sets = source.test_names if source.names_its_tests else ["test_2016_flickr"]
    if not isinstance(config.test_sets, list) or not config.test_sets:
        report.add(Problem("test_sets", config.test_sets, "must be a list of at least one test set",
                           f"name test sets of the data: {', '.join(source.test_names) or '(it has none: add tests)'}"),
                   ("test_sets",), "test_sets")
        return
    for i, name in enumerate(config.test_sets):
        if name == POOLED:
            report.add(Problem("test_sets", name, "is the report's name for all test sets together",
                               "rename that test set"), ("test_sets", i), "test_sets")
        elif name not in source.test_names:
            where = {"multi30k": f"Multi30k folder {source.path}", "folder": f"folder {source.path}",
                     "prepared": f"prepared folder {source.path}", "files": "data.tests",
                     "hf_dataset": "the dataset"}[source.kind]
            report.add(Problem("test_sets", name, f"is not a test set of the data ({where} has "
                               f"{', '.join(source.test_names) or 'none'})",
                               "name one of those, fix the spelling, or add the test set to the data"),
                       ("test_sets", i), "test_sets")
    for problem in check(source, ["train", "valid", *[n for n in config.test_sets if n in source.test_names]]):
        report.add(problem.problem, problem.path, problem.label)
    if config.teacher_model and not (Path(config.teacher_model) / "config.json").is_file():
        report.add(Problem("teacher_model", config.teacher_model, "is not a model folder (no config.json)",
                           "give the folder of a trained teacher (tiekd average's output, or a Hugging Face "
                           "Marian folder)"), ("teacher_model",), "teacher_model")


def _run_problems(settings: dict) -> list[Problem]:
    """Every problem `RunConfig` finds in one run's settings (unknown keys are the caller's to report),
    plus a model that is neither a preset nor a folder and a run with no length, which the trainer
    would find only when the run starts."""
    from ..config import RunConfig
    from ..models import PRESETS

    problems = []
    model = settings.get("model", RunConfig.model)
    if isinstance(model, str) and model not in PRESETS and not (Path(model) / "config.json").is_file():
        problems.append(Problem("model", model, "is neither a model preset nor a model folder (no config.json)",
                                f"use one of {', '.join(PRESETS)}, or a model folder"))
    valid = {f.name for f in dataclasses.fields(RunConfig)}
    try:
        config = RunConfig(**{**{key: value for key, value in settings.items() if key in valid}, "out": RUN})
    except InvalidConfig as error:
        return problems + error.problems
    if not config.max_updates and not config.max_epochs:
        problems.append(Problem("max_updates", config.max_updates, "neither max_updates nor max_epochs is set",
                                "set one of them"))
    return problems


def _student_origin(key: str, config, spec, i: int) -> tuple[tuple, str, bool]:
    """Where a student run's `key` was written: (path in the YAML, label, whether it is in the shared
    `student:` settings). The row's own fields win over its options, which win over the shared settings."""
    row = f"students[{i}] ({spec.name})"
    if key == "model":
        if spec.sizes:
            return ("students", i, "sizes"), f"{row} sizes", False
        return ("student_sizes",), f"student_sizes, in {row},", False
    if key == "seed":
        if spec.seeds:
            return ("students", i, "seeds"), f"{row} seeds", False
        return ("seeds",), f"seeds, in {row},", False
    if key == "method":
        return ("students", i, "method"), f"{row} method", False
    if key in spec.options:
        return ("students", i, "options", key), f"{row} options.{key}", False
    if key in config.student:
        return ("student", key), f"student.{key}", True
    return ("students", i), f"{row} {key}", False
