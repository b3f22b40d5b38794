"""Run the whole reproduction pipeline from a preset or YAML: data, teacher, students, tables, plots.

Stages (each writes `stage.json` with the hash of the settings that produced it when it is done):
prepare -> teacher (train, average, translate, score) -> students (method x size x seed: distill,
average, translate, score, analyze) -> significance (paired bootstrap vs No-KD and Word-KD) -> report
(results.md, results.csv, plots). Rerunning skips finished stages; an interrupted training stage
resumes from its last checkpoint; a stage finished under different settings is refused, never mixed.
Every run's settings (the teacher and each student row) are checked when the experiment is read,
before any stage starts (`checks`).

Several workers may share one experiment folder (e.g. one per core or per GPU, each started with the
same command): a stage is claimed with an exclusive `flock` on a file in `.locks/`, so each student is
trained by exactly one worker; the others skip to the next free stage, then wait for the claimed ones
before writing the report. The lock dies with its process, so a killed worker's stage is resumed by
the next run. Rows (students, seeds, sizes) may be added to a finished experiment; any other change is
refused, because the finished stages would no longer match the table's settings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import TiekdError
from ..inference.decode_limits import MAX_DECODE_LENGTH
from ..io import atomic_write_json
from ..kd.methods import METHODS
from . import stages

PRESET_DIR = Path(__file__).resolve().parents[1] / "presets"  # tiekd/presets (package data)


@dataclass
class StudentSpec:
    """One row of the results table: a method with its options."""

    name: str                                   # row label, e.g. "TIE-KD"
    method: str = "none"                        # a KD_METHODS entry
    options: dict = field(default_factory=dict)  # RunConfig overrides (e.g. ranking: false)
    sizes: list[str] | None = None              # student presets for this row (default: all sizes)
    seeds: list[int] | None = None              # seeds for this row (default: the experiment's seeds)
    # a baseline row: every row is compared with it at the same size and seed (paired tests, a column
    # "Δ vs <label>"); true labels the column with the row's name, a string names the column it joins
    # (e.g. a No-KD row at another size: `baseline: No-KD`)
    baseline: bool | str = False

    @property
    def baseline_label(self) -> str | None:
        if not self.baseline:
            return None
        return self.name if self.baseline is True else str(self.baseline)


@dataclass
class ExperimentConfig:
    """What `tiekd experiment` runs; presets live in tiekd/presets/*.yaml."""

    name: str = "experiment"
    note: str | None = None           # a line the report shows under its title (e.g. what the run cannot settle)
    multi30k: str | None = None       # Multi30k folder (default: ../shared/data/multi30k or $TIEKD_MULTI30K_DIR)
    # any other data (tiekd/data/source.py): {folder: DIR}, {train: .., valid: .., tests: {NAME: ..}} or
    # {prepared: DIR}; {multi30k: DIR} is the same as the key above
    data: dict | None = None
    src_lang: str = "de"
    tgt_lang: str = "en"
    vocab_size: int = 8000
    train_pairs: int = 0              # use only the first N training pairs (0: all)
    teacher_model: str | None = None  # reuse this teacher folder (and its tokenizer) instead of training one
    teacher: dict = field(default_factory=dict)   # RunConfig settings for the teacher
    student: dict = field(default_factory=dict)   # RunConfig settings shared by every student
    student_sizes: list[str] = field(default_factory=lambda: ["small"])
    students: list[StudentSpec] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [1])
    # order in which workers train the students: "rows" (each row's seeds in turn) or "seeds" (every row's
    # first seed before any row's second, so that a table still running covers every method early)
    run_order: str = "rows"
    average_last: int = 5
    # test sets to translate and score; unset: every test set the data names (Multi30k: test_2016_flickr);
    # with several, the report compares rows on all of them pooled
    test_sets: list[str] | None = None
    beam: int = 4
    length_penalty: float = 0.6
    max_decode_length: int = MAX_DECODE_LENGTH  # generated tokens at most (Multi30k targets are < 100)
    test_max_sentences: int = 0       # translate only the first N sentences of each test set (0: all; for tests)
    analyze_sentences: int = 500      # validation pairs used for top-1 agreement (0: all)
    bootstrap_resamples: int = 1000
    randomization_trials: int = 10000  # sacreBLEU's paired approximate randomization (the reported p)

    @classmethod
    def from_dict(cls, values: dict, source: str, check_data: bool = True) -> "ExperimentConfig":
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in values if k not in valid]
        if unknown:
            raise TiekdError(f"{source}: unknown key(s) {', '.join(unknown)}. Fix: use only {', '.join(valid)}")
        values = dict(values)
        students = []
        for i, spec in enumerate(values.pop("students", None) or []):
            try:
                students.append(StudentSpec(**spec))
            except TypeError as exc:
                raise TiekdError(f"{source}: students[{i}]: {exc}. Fix: use keys name, method, options, sizes, seeds, baseline") from exc
        config = cls(students=students, **values)
        from .checks import check_experiment

        check_experiment(config, source, check_data)  # every run's settings, before any stage starts
        return config

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def teacher_settings(self, data: Path | str) -> dict:
        """The RunConfig settings of the teacher's run (hashed into its stage)."""
        return {"data": str(data), **self.teacher}

    def student_settings(self, spec: StudentSpec, size: str, seed: int, data: Path | str, teacher: Path | str) -> dict:
        """The RunConfig settings of one student run (hashed into its stage): the shared `student`
        settings, the row's options, then what the row itself sets (size, seed, method, teacher)."""
        settings = {"data": str(data), **self.student, **spec.options, "model": size, "seed": seed,
                    "method": spec.method, "teacher": str(teacher) if _needs_teacher(spec.method) else ""}
        if spec.options.get("seq_kd_targets") and not settings["teacher"]:
            settings["teacher"] = str(teacher)
        return settings

    def student_runs(self) -> list[tuple[StudentSpec, str, int]]:
        """(row, size, seed) of every student run, in the table's order."""
        return [(spec, size, seed) for spec in self.students for size in spec.sizes or self.student_sizes
                for seed in spec.seeds or self.seeds]

    def training_order(self) -> list[int]:
        """Indices into `student_runs()` in the order the workers train them (`run_order`)."""
        runs = self.student_runs()
        if self.run_order == "rows":
            return list(range(len(runs)))
        # the k-th seed of every row before the (k+1)-th of any; the table's order within each round
        round_of = [(spec.seeds or self.seeds).index(seed) for spec, _, seed in runs]
        return sorted(range(len(runs)), key=lambda i: (round_of[i], i))


def _needs_teacher(method: str) -> bool:
    """Whether rows of `method` get the teacher; an unknown method (a typo the checks report with the
    others, tiekd/experiment/checks.py) is given one, so that it fails there and not here."""
    return method not in METHODS or METHODS[method].needs_teacher


def load_experiment_config(preset: str | None, config_path: str | None, check_data: bool = True) -> ExperimentConfig:
    from ..config import load_config_file

    if config_path:
        return ExperimentConfig.from_dict(load_config_file(config_path), source=config_path, check_data=check_data)
    path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))
        raise TiekdError(f"unknown preset {preset!r}. Fix: use one of {', '.join(names)} or --config FILE")
    return ExperimentConfig.from_dict(load_config_file(path), source=str(path), check_data=check_data)


def settings_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# Keys that only add or relabel rows: changing them keeps every finished stage valid.
ROW_KEYS = ("name", "note", "students", "seeds", "student_sizes", "run_order")
BUSY = object()  # _stage's answer when another worker holds the stage


@contextlib.contextmanager
def claim(lock: Path, wait: bool):
    """Hold an exclusive lock on the file `lock` (yield True), or yield False at once if `wait` is off
    and another process holds it. flock locks are released by the kernel when their process dies."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class Pipeline:
    """Runs the stages in `out`; each is skipped when its `stage.json` matches its settings."""

    def __init__(self, config: ExperimentConfig, out: Path, device: str = "auto", report_only: bool = False,
                 nproc_per_node: int = 1, teacher_cache: str | None = None):
        self.config = config
        self.teacher_cache = teacher_cache  # a folder of teacher-logit caches for the KD rows (stages.train)
        self.report_only = report_only
        self.out = Path(out)
        self.device = device
        self.nproc_per_node = nproc_per_node  # > 1: each training stage runs under torchrun (see _train)
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self.out / "experiment.yaml"
        current = json.loads(json.dumps(config.to_dict()))
        previous = yaml.safe_load(saved.read_text()) if saved.is_file() else None
        if previous is not None:
            free = ROW_KEYS
            if not any((self.out / "students").glob("*/stage.json")):
                free += ("student",)  # no student finished yet: their shared settings may still change
            # a key the saved file lacks (one added to tiekd since) counts as its default
            defaults = json.loads(json.dumps(ExperimentConfig().to_dict()))
            changed = sorted(k for k in set(previous) | set(current)
                             if k not in free and previous.get(k, defaults.get(k)) != current.get(k))
            if changed:
                raise TiekdError(f"{self.out}: holds an experiment with different settings ({saved}: "
                                 f"{', '.join(changed)}). Fix: use a new --out, or delete the folder to start "
                                 "again; only rows (students, seeds, student_sizes) may be added to it")
        if not report_only and previous != current:
            from ..io import atomic_write_text

            atomic_write_text(saved, yaml.safe_dump(config.to_dict(), sort_keys=False))

    # ------------------------------------------------------------ stage book-keeping
    def portable(self, value):
        """`value` with paths inside the experiment folder written as `<out>/...`, so that a stage's hash
        does not depend on how --out was spelled (relative, absolute) or where the folder was moved."""
        if isinstance(value, dict):
            return {k: self.portable(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.portable(v) for v in value]
        if isinstance(value, str):
            for root in (str(self.out), str(self.out.resolve())):
                if value == root or value.startswith(root + "/"):
                    return "<out>" + value[len(root):]
        return value

    def _lock(self, name: str) -> Path:
        # in .locks/, not in the stage folder: some stages replace their folder atomically
        return self.out / ".locks" / (name.replace("/", "__") + ".lock")

    def _finished(self, folder: Path, digests: tuple[str, ...]):
        marker = folder / "stage.json"
        if not marker.is_file():
            return None
        record = json.loads(marker.read_text())
        if record["settings_hash"] not in digests:
            raise TiekdError(f"{folder}: finished under other settings. Fix: delete {folder} to redo it")
        return record

    def _stage(self, folder: Path, settings: dict, work, wait: bool = True):
        """Run `work()` unless `folder/stage.json` records the same settings; return its result.

        With `wait` off, return BUSY at once when another worker holds the stage."""
        digest = settings_hash(self.portable(settings))
        # stages finished before hashes became path-independent carry the hash of the raw settings
        digests = (digest, settings_hash(settings))
        record = self._finished(folder, digests)
        if record is not None:
            return record["result"]
        if self.report_only:
            return None
        with claim(self._lock(str(folder.relative_to(self.out))), wait) as held:
            if not held:
                return BUSY
            record = self._finished(folder, digests)  # another worker may have finished it meanwhile
            if record is not None:
                return record["result"]
            folder.mkdir(parents=True, exist_ok=True)
            started = time.time()
            result = work()
            atomic_write_json(folder / "stage.json", {"settings_hash": digest, "settings": settings, "result": result,
                                                      "seconds": round(time.time() - started, 1)})
            return result

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    # ------------------------------------------------------------ stages
    def source(self):
        """The experiment's data (tiekd.data.source), its files looked up again (they may have moved)."""
        from ..data.source import read_source

        config = self.config
        return read_source(config.data, config.multi30k, config.src_lang, config.tgt_lang)

    def data_dir(self, source) -> Path:
        """The prepared-data folder the stages read: the experiment's own `data/`, or the user's prepared
        folder `source` itself when it can be used as it is (no head slice, the teacher's tokenizer or none)."""
        if source.kind == "prepared" and not self.config.train_pairs and not self._needs_teacher_tokenizer(source):
            return source.path
        return self.out / "data"

    def _needs_teacher_tokenizer(self, source) -> bool:
        """Whether a prepared folder must be encoded again because the teacher's vocabulary differs."""
        if not self.config.teacher_model:
            return False
        from ..data.tokenizer import load_tokenizer, vocab_fingerprint

        return vocab_fingerprint(load_tokenizer(self.config.teacher_model)) != \
            vocab_fingerprint(load_tokenizer(source.path / "tokenizer"))

    def prepare_inputs(self) -> list:
        return stages.prepare_inputs(self.config)

    def prepare(self, source) -> Path:
        return stages.prepare(self.out, self.config, source)

    # the stages' work (tiekd/experiment/stages.py); methods, so that tests can stand in for them
    def _train(self, folder: Path, settings: dict) -> dict:
        return stages.train(folder, settings, self.device, self.config.average_last, self.nproc_per_node, self.log,
                            self.teacher_cache)

    def _evaluate(self, model_dir: Path, folder: Path, data: Path) -> dict:
        return stages.evaluate(model_dir, folder, data, self.config, self.device)

    def _analyze(self, student: Path, teacher: Path, data: Path) -> dict:
        return stages.analyze(student, teacher, data, self.config, self.device)

    def run(self) -> Path:
        config = self.config
        self.log(f"experiment {config.name} in {self.out}")
        source = self.source()  # read once: a folder is listed, a dataset opened
        data = self.data_dir(source)
        if data == self.out / "data":
            done = self._stage(data, {"prepare": self.prepare_inputs()}, lambda: str(self.prepare(source)))
            if done is None:
                raise TiekdError(f"{self.out}: no prepared data yet. Fix: run without --report-only")

        jobs = config.student_runs()
        order = config.training_order()
        teacher_dir = self.out / "teacher"
        if config.teacher_model:
            teacher_model = Path(config.teacher_model)
        else:
            self.log("training the teacher")
            settings = config.teacher_settings(data)
            train_teacher = lambda: self._train(teacher_dir, settings)
            if self._stage(teacher_dir, {"train": settings}, train_teacher, wait=False) is BUSY:
                self.log("another worker trains the teacher; meanwhile training the students that need none")
                self._pretrain_teacher_free([jobs[i] for i in order], data)
                self._stage(teacher_dir, {"train": settings}, train_teacher)
            teacher_model = teacher_dir / "model"
        self.log("evaluating the teacher")
        teacher_scores = self._stage(teacher_dir / "eval", {"eval": [str(teacher_model), config.test_sets, config.beam,
                                                                     config.length_penalty]},
                                     lambda: self._evaluate(teacher_model, teacher_dir / "eval", data))

        # first pass: every stage no other worker holds; second: wait for the ones that were held
        results = [None] * len(jobs)
        for i in order:
            results[i] = self._student(*jobs[i], data, teacher_model, wait=False)
        for i in order:
            if results[i] is BUSY:
                self.log(f"waiting for another worker to finish {self.slug(*jobs[i])}")
                results[i] = self._student(*jobs[i], data, teacher_model, wait=True)
        rows = [row for row in results if row is not None]  # None: not finished (only with --report-only)
        if teacher_scores is None:
            raise TiekdError(f"{self.out}: the teacher is not evaluated yet. Fix: run without --report-only")
        table = {"teacher": {"model": str(teacher_model), "scores": teacher_scores, "folder": str(teacher_dir / "eval")},
                 "students": rows, "data": str(data),
                 "data_name": source.name}
        from .report import add_pooled_scores, add_significance, write_report

        with claim(self._lock("report"), wait=True):  # one worker writes the report at a time
            add_pooled_scores(table, config)
            add_significance(table, self.out, config)
            write_report(table, self.out, config)
        self.log(f"results: {self.out / 'results.md'}")
        return self.out / "results.md"

    @staticmethod
    def slug(spec: StudentSpec, size: str, seed: int) -> str:
        return stages.row_slug(spec.name, size, seed)

    def _student_folder(self, spec: StudentSpec, size: str, seed: int) -> Path:
        return stages.student_folder(self.out, spec.name, size, seed, self.log)

    def _pretrain_teacher_free(self, jobs: list, data: Path) -> None:
        """Train (not yet evaluate) the rows that need no teacher, skipping any another worker holds.

        Their stages run later as usual: the training resumes from its last checkpoint with nothing
        left to do, then the model is evaluated and compared with the teacher."""
        for spec, size, seed in jobs:
            if _needs_teacher(spec.method) or spec.options.get("seq_kd_targets"):
                continue
            slug = self.slug(spec, size, seed)
            folder = self._student_folder(spec, size, seed)
            if (folder / "stage.json").is_file():
                continue
            with claim(self._lock(str(folder.relative_to(self.out))), wait=False) as held:
                if held:
                    self.log(f"student {slug}: training it while the teacher trains")
                    settings = self.config.student_settings(spec, size, seed, data, self.out / "teacher" / "model")
                    self._train(folder, settings)

    def _student(self, spec: StudentSpec, size: str, seed: int, data: Path, teacher: Path, wait: bool = True):
        config = self.config
        slug = self.slug(spec, size, seed)
        folder = self._student_folder(spec, size, seed)
        settings = self.config.student_settings(spec, size, seed, data, teacher)
        def work():
            self.log(f"student {slug}: {spec.method}")
            summary = self._train(folder, settings)
            scores = self._evaluate(folder / "model", folder, data)
            analysis = self._analyze(folder / "model", teacher, data)
            return {"summary": summary, "scores": scores, "analysis": analysis}

        result = self._stage(folder, {"student": settings, "eval": [config.test_sets, config.beam, config.length_penalty]},
                             work, wait=wait)
        if result is None or result is BUSY:
            return result
        return {"name": spec.name, "method": spec.method, "options": dict(spec.options), "baseline": spec.baseline_label,
                "size": size, "seed": seed, "folder": str(folder), **result}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="quick",
                        help="quick (the README job: 9-19 min on 2 CPU cores), cpu (~4 core-hours), "
                             "converged (~38 core-hours), capacity (~51 core-hours, ~38 with --teacher-cache), gpu (one GPU), and the paper's "
                             "WMT settings for GPUs: wmt14-en-de, wmt14-en-fr, wmt16-en-ro")
    parser.add_argument("--config", help="experiment YAML (overrides --preset); see tiekd/presets/")
    parser.add_argument("--out", required=True, help="experiment folder (rerun the same command to continue)")
    parser.add_argument("--device", default="auto", type=_device, help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--nproc-per-node", type=int, default=1, metavar="N",
                        help="train each stage with N data-parallel processes under torchrun (one per GPU; gloo on "
                             "CPUs); the global batch is N x update_freq batches. Default 1: in this process")
    parser.add_argument("--teacher-cache", metavar="DIR",
                        help="compute the teacher's logits on the training set's gold prefixes once, into DIR, and "
                             "read them back in every KD row instead of running the teacher there (the same values; "
                             "target tokens x vocabulary x 4 bytes on disk: 14.5 GB for Multi30k). Not part of any "
                             "row's settings: finished rows stay finished, unfinished ones resume")
    parser.add_argument("--report-only", action="store_true",
                        help="write the tables and plots from the stages finished so far; train nothing")


def _device(name: str) -> str:
    """--device checked as RunConfig checks its device, before any stage starts."""
    from ..config import DEVICE_PATTERN

    if not re.fullmatch(DEVICE_PATTERN[0], name):
        raise argparse.ArgumentTypeError(f"{name!r}: use {DEVICE_PATTERN[1]}")
    return name


def run(args: argparse.Namespace) -> int:
    config = load_experiment_config(args.preset, args.config)
    if args.nproc_per_node < 1:
        raise TiekdError(f"--nproc-per-node {args.nproc_per_node}: give 1 or more processes")
    path = Pipeline(config, Path(args.out), device=args.device, report_only=args.report_only,
                    nproc_per_node=args.nproc_per_node, teacher_cache=args.teacher_cache).run()
    print(path.read_text(encoding="utf-8"))
    return 0
