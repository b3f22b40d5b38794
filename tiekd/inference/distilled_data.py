"""Distilled training data at scale: the teacher translates the training sources (sequence-level KD).

Kim & Rush (2016) train the student on the teacher's beam-search outputs instead of the references.
Production pipelines (Bergamot / Firefox Translations, Bogoychev et al. 2020) build these targets
with a fast inference engine, keep an n-best list per sentence and choose from it the hypothesis
closest to the reference by chrF (Popović 2015), which trades a little of the teacher's own top-1 for
fewer teacher errors in the student's targets. Without references (forward translation of
monolingual source text) the teacher's 1-best is kept.

This module decodes with CTranslate2 (a model folder is exported to a CTranslate2 folder once, in the
work folder) or with PyTorch `generate`, in shards of `shard_size` lines. Under torchrun every rank
takes every W-th shard (rank r: shards r, r + W, ...) and rank 0 merges them:
- each shard is written atomically with its own record (line count, empty and runaway outputs), so
  an interrupted build resumes at the first missing shard and never trusts a torn one;
- integrity checks: every shard has exactly its source's line count (else it is translated again);
  empty outputs and runaway outputs (cut at the length limit, or longer than `runaway_ratio` times
  the source in tokens) are counted and reported, and are kept in place so that lines stay aligned;
- a progress bar shows sentences/s.
"""

from __future__ import annotations

import itertools
import json
import time
import typing
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import writes
from ..errors import TiekdError
from .decode_limits import MAX_DECODE_LENGTH
from ..io import atomic_write_json, atomic_write_text, count_lines, iter_lines

# tiekd.training.distributed (torch) is imported where it is used: the command line builds its parser from this
# module and `tiekd --help` should not wait seconds for torch
if typing.TYPE_CHECKING:
    from ..training.distributed import DistInfo

ENGINES = ("ctranslate2", "pytorch")
SELECTIONS = ("best", "chrf")


@dataclass
class DistillationOptions:
    """How the teacher decodes and which hypothesis becomes the target."""

    engine: str = "ctranslate2"     # ctranslate2 (fast, batched) or pytorch (`generate`)
    beam: int = 4                   # beam size (the paper's 4)
    length_penalty: float = 0.6     # score / length**length_penalty, as in `generate`
    nbest: int = 1                  # hypotheses kept per sentence (at most `beam`)
    select: str = "best"            # best: the teacher's 1-best; chrf: the n-best entry closest to the reference
    max_length: int = MAX_DECODE_LENGTH
    batch_size: int = 64            # sentences per engine call
    shard_size: int = 2048          # sentences per resumable shard
    compute_type: str = "default"   # CTranslate2 compute type (e.g. int8 for speed; default keeps the weights' type)
    threads: int = 0                # CTranslate2 intra-op threads (0: its default)
    runaway_ratio: float = 3.0      # an output longer than this many times its source (tokens) counts as runaway

    def validate(self) -> None:
        problems = []
        if self.engine not in ENGINES:
            problems.append(f"engine {self.engine!r} is not one of {', '.join(ENGINES)}")
        if self.select not in SELECTIONS:
            problems.append(f"select {self.select!r} is not one of {', '.join(SELECTIONS)}")
        if self.beam < 1 or not 1 <= self.nbest <= self.beam:
            problems.append(f"need 1 <= nbest ({self.nbest}) <= beam ({self.beam})")
        if self.select == "chrf" and self.nbest < 2:
            problems.append("select chrf chooses among n-best entries: it needs nbest >= 2")
        if self.engine == "pytorch" and self.nbest > 1:
            problems.append("n-best lists come from the ctranslate2 engine only")
        for name in ("max_length", "batch_size", "shard_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if problems:
            raise TiekdError("distilled data: " + "; ".join(problems) + ". Fix: change those options")


# ---------------------------------------------------------------------------------------------------
# engines: sentences -> n-best lists of (text, token count, cut at the length limit)


class _CTranslate2Engine:
    def __init__(self, folder: Path, options: DistillationOptions):
        from .export import CTranslate2Translator

        self.options = options
        # the teacher's own outputs: a shortlist stored with an export would restrict them unrecorded
        self.translator = CTranslate2Translator(folder, compute_type=options.compute_type,
                                                intra_threads=options.threads, use_shortlist=False)
        self.tokenizer = self.translator.tokenizer

    def nbest(self, sentences: list[str]) -> list[list[tuple[str, int, bool]]]:
        o = self.options
        results = self.translator.translate_tokens(sentences, beam_size=o.beam, length_penalty=o.length_penalty,
                                                   max_length=o.max_length, batch_size=o.batch_size,
                                                   num_hypotheses=o.nbest)
        out = []
        for hypotheses in results:
            entries = []
            for tokens in hypotheses:
                ids = self.tokenizer.convert_tokens_to_ids(tokens)
                text = self.tokenizer.decode(ids, skip_special_tokens=True)
                entries.append((text, len(tokens), len(tokens) >= o.max_length))
            out.append(entries)
        return out


class _PyTorchEngine:
    def __init__(self, model_dir: Path, options: DistillationOptions, model=None):
        from ..models import load_model
        from ..data.tokenizer import load_tokenizer

        self.options = options
        # a teacher the caller already holds (e.g. on its GPU) decodes where it lives
        self.model = model.eval() if model is not None else load_model(str(model_dir)).eval()
        self.tokenizer = load_tokenizer(model_dir)

    def nbest(self, sentences: list[str]) -> list[list[tuple[str, int, bool]]]:
        from .translate import DecodeOptions, translate_to_ids

        o = self.options
        outputs = translate_to_ids(self.model, self.tokenizer, sentences,
                                   DecodeOptions(beam=o.beam, length_penalty=o.length_penalty, max_length=o.max_length,
                                                 batch_sentences=o.batch_size, progress=False))
        eos = self.tokenizer.eos_token_id
        out = []
        for ids in outputs:
            length = sum(1 for t in ids if t != eos)
            # `generate` spends the last allowed token on a forced </s>: max_length - 1 tokens means cut
            cut = eos not in ids or length >= o.max_length - 1
            out.append([(self.tokenizer.decode(ids, skip_special_tokens=True), length, cut)])
        return out


def _check_teacher_folder(teacher: Path, options: DistillationOptions) -> None:
    """A clear error when `teacher` is neither a model folder nor a CTranslate2 folder, or cannot serve."""
    is_ct2 = (teacher / "model.bin").is_file()
    is_model = (teacher / "config.json").is_file()
    if not is_ct2 and not is_model:
        raise TiekdError(f"{teacher}: neither a model folder (config.json) nor a CTranslate2 folder (model.bin). "
                         "Fix: pass a folder written by tiekd train/distill/average/export, or an OPUS-MT model")
    if options.engine == "pytorch" and not is_model:
        raise TiekdError(f"{teacher}: a CTranslate2 folder cannot decode with the pytorch engine. Fix: pass the "
                         "model folder, or use the ctranslate2 engine")


def _exported_teacher(teacher: Path, work_dir: Path) -> Path:
    """The CTranslate2 folder to decode with: `teacher` itself, or its export in `work_dir` (made once)."""
    if (teacher / "model.bin").is_file():
        return teacher
    from .export import export_ctranslate2

    exported = work_dir / "teacher-ct2"
    if not (exported / "model.bin").is_file():
        # float32 keeps the teacher's own outputs; --compute-type int8 quantizes at load time
        export_ctranslate2(teacher, exported, quantization="float32", overwrite=True)
    return exported


def _open_engine(teacher: Path, work_dir: Path, options: DistillationOptions, model=None):
    """The teacher as a decoding engine (a CTranslate2 export must already exist, see _exported_teacher)."""
    if options.engine == "pytorch":
        return _PyTorchEngine(teacher, options, model)
    return _CTranslate2Engine(_exported_teacher(teacher, work_dir), options)


# ---------------------------------------------------------------------------------------------------
# selection and checks


def choose_hypothesis(entries: list[tuple[str, int, bool]], reference: str | None, select: str) -> int:
    """Index of the chosen n-best entry: the 1-best, or the highest sentence chrF against `reference`
    (ties keep the better-ranked entry)."""
    if select == "best" or reference is None or len(entries) == 1:
        return 0
    from sacrebleu.metrics import CHRF

    chrf = CHRF()
    scores = [chrf.sentence_score(text, [reference]).score for text, _, _ in entries]
    return max(range(len(entries)), key=lambda i: (scores[i], -i))


def _source_lengths(tokenizer, sentences: list[str]) -> list[int]:
    return [len(ids) - 1 for ids in tokenizer(sentences).input_ids]  # without </s>


def _translate_shard(engine, sources: list[str], references: list[str] | None, options: DistillationOptions):
    """(targets, record) of one shard; the record counts what the integrity checks look at."""
    nbest = engine.nbest(sources)
    source_lengths = _source_lengths(engine.tokenizer, sources)
    targets, empty, runaway, changed = [], 0, 0, 0
    for k, entries in enumerate(nbest):
        chosen = choose_hypothesis(entries, references[k] if references else None, options.select)
        text, length, cut = entries[chosen]
        changed += chosen != 0
        text = text.replace("\n", " ").strip()
        empty += not text
        runaway += cut or length > options.runaway_ratio * max(source_lengths[k], 1)
        targets.append(text)
    record = {"lines": len(targets), "empty": empty, "runaway": runaway, "not_1best": changed}
    return targets, record


def _shard_is_complete(text_path: Path, record_path: Path, expected_lines: int) -> bool:
    if not text_path.is_file() or not record_path.is_file():
        return False
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except ValueError:
        return False
    lines = text_path.read_text(encoding="utf-8").count("\n")
    return record.get("lines") == expected_lines == lines


# ---------------------------------------------------------------------------------------------------
# the build


def build_distilled_data(teacher: str | Path, sources_path: str | Path, out_path: str | Path,
                         references_path: str | Path | None = None, work_dir: str | Path | None = None,
                         options: DistillationOptions | None = None, quiet: bool = False,
                         dist: DistInfo | None = None, model=None) -> dict:
    """Translate `sources_path` with `teacher` into `out_path` (one target per source line); resumable.

    Under torchrun (`dist`, None outside it) every rank calls this: rank r translates shards r, r + W, ... and rank 0
    merges them. `model`, for the pytorch engine, is the teacher already loaded (from `teacher`).
    Returns the build's report (also written beside `out_path` as `<out>.json`): options, sentence
    counts, empty / runaway outputs, how many targets chrF selection took from below the 1-best, and
    the decoding speed in sentences/s over the shards translated in this call (by rank 0).
    """
    from tqdm.auto import tqdm

    from ..training.distributed import DistInfo, open_long_waits

    dist = dist or DistInfo()

    options = options or DistillationOptions()
    options.validate()
    out_path = Path(out_path)
    # streamed: the sources (and references) are counted here, and read a shard at a time below
    count = count_lines(sources_path)
    if references_path and (references := count_lines(references_path)) != count:
        raise TiekdError(f"{references_path}: {references} lines, but {sources_path} has {count}. "
                         "Fix: pass the reference file aligned line by line with the sources")
    if options.select == "chrf" and not references_path:
        raise TiekdError("--select chrf chooses by the reference: it needs --references. Fix: pass the references, "
                         "or use --select best for monolingual source text")
    work_dir = Path(work_dir) if work_dir else out_path.parent / f".{out_path.name}.work"
    shards_dir = work_dir / "shards"
    # what decides the targets; the thread count only decides the speed, so a resume may change it
    decisive = {k: v for k, v in asdict(options).items() if k != "threads"}
    settings = {**decisive, "teacher": str(Path(teacher).resolve()), "sources": str(Path(sources_path).resolve()),
                "references": str(Path(references_path).resolve()) if references_path else None}
    teacher = Path(teacher)
    _check_teacher_folder(teacher, options)
    size = options.shard_size
    spans = [(start, min(start + size, count)) for start in range(0, count, size)]
    left = [k for k, (a, b) in enumerate(spans)
            if not _shard_is_complete(shards_dir / f"{k:06d}.txt", shards_dir / f"{k:06d}.json", b - a)]
    todo = [k for k in left if k % dist.world_size == dist.rank]

    def prepare() -> None:  # one rank checks the settings and exports the teacher; the others wait for it
        if dist.is_main:
            shards_dir.mkdir(parents=True, exist_ok=True)
            for stale in work_dir.glob(".failed-*"):
                stale.unlink()
            _check_same_settings(work_dir / "settings.json", settings)
            if options.engine == "ctranslate2" and left:
                _exported_teacher(teacher, work_dir)

    def translate() -> tuple[int, float]:
        mine = sum(spans[k][1] - spans[k][0] for k in range(len(spans)) if k % dist.world_size == dist.rank)
        bar = tqdm(total=mine, initial=mine - sum(spans[k][1] - spans[k][0] for k in todo), desc="distilled data",
                   unit="sent", disable=quiet or not dist.is_main, dynamic_ncols=True)
        engine = _open_engine(teacher, work_dir, options, model) if todo else None
        translated, seconds = 0, 0.0
        shard_sources = _shards(sources_path, spans, todo)
        shard_references = _shards(references_path, spans, todo) if references_path else itertools.repeat(None)
        for k, shard, references in zip(todo, shard_sources, shard_references):
            a, b = spans[k]
            started = time.perf_counter()
            targets, record = _translate_shard(engine, shard, references, options)
            seconds += time.perf_counter() - started
            translated += b - a
            # text first, record last: a shard counts as done only once both exist and agree
            atomic_write_text(shards_dir / f"{k:06d}.txt", "".join(t + "\n" for t in targets))
            atomic_write_json(shards_dir / f"{k:06d}.json", record)
            bar.update(b - a)
            bar.set_postfix(empty=record["empty"], runaway=record["runaway"])
        bar.close()
        return translated, seconds

    def merge() -> None:
        if dist.is_main:
            _merge_shards(out_path, shards_dir, work_dir, spans, settings, options, *done)

    open_long_waits(dist)  # every rank is here together: nothing uneven has happened yet
    _together(dist, work_dir, "prepare", prepare)
    done = _together(dist, work_dir, "translate", translate)
    _together(dist, work_dir, "merge", merge)
    return json.loads(out_path.with_name(out_path.name + ".json").read_text(encoding="utf-8"))


def _shards(path: str | Path, spans: list[tuple[int, int]], chosen: list[int]):
    """The lines of shards `chosen` (ascending) of a text file, one shard at a time, read in one pass."""
    lines = iter_lines(path)
    position = 0
    for k in chosen:
        start, end = spans[k]
        for _ in itertools.islice(lines, start - position):
            pass
        yield list(itertools.islice(lines, end - start))
        position = end


def _together(dist: DistInfo, work_dir: Path, stage: str, action):
    """Run `action` on this rank, then meet the other ranks; if any rank failed, every rank raises.

    Under torchrun an error on one rank (a settings mismatch on rank 0, a failed export) would otherwise
    leave the others waiting until the launcher kills them, with no message of their
    own. The failing rank leaves its message in the work folder before it meets the others."""
    from ..training.distributed import wait_for_all

    try:
        result = action()
    except Exception as exc:
        if dist.enabled:
            work_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(work_dir / f".failed-{stage}-rank{dist.rank}", f"rank {dist.rank}: {exc}")
            wait_for_all(dist)
        raise
    wait_for_all(dist)
    failed = sorted(work_dir.glob(f".failed-{stage}-rank*")) if dist.enabled else []
    if failed:
        raise TiekdError(failed[0].read_text(encoding="utf-8"))
    return result


def _merge_shards(out_path: Path, shards_dir: Path, work_dir: Path, spans: list[tuple[int, int]], settings: dict,
                  options: DistillationOptions, translated: int, seconds: float) -> None:
    """Write the targets file from the shards, then its report beside it."""
    sources = spans[-1][1] if spans else 0
    records = [json.loads((shards_dir / f"{k:06d}.json").read_text(encoding="utf-8")) for k in range(len(spans))]
    with writes.atomic_stream(out_path) as sink:  # a shard at a time: the targets are never held whole
        lines = 0
        for k in range(len(spans)):
            text = (shards_dir / f"{k:06d}.txt").read_text(encoding="utf-8")
            lines += text.count("\n")
            sink.write(text)
        if lines != sources:  # cannot happen unless the shards were edited by hand
            raise TiekdError(f"{shards_dir}: the shards hold {lines} lines for {sources} sources. "
                             f"Fix: delete {work_dir} and build again")
    report = {**settings, "threads": options.threads, "out": str(out_path), "sentences": sources,
              **{key: sum(r[key] for r in records) for key in ("empty", "runaway", "not_1best")},
              "translated_now": translated,
              "sentences_per_s": translated / seconds if seconds > 0 else None}
    atomic_write_json(out_path.with_name(out_path.name + ".json"), report)


def _check_same_settings(path: Path, settings: dict) -> None:
    """A work folder belongs to one build: resuming it with other settings would mix two kinds of targets."""
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
        if changed:
            raise TiekdError(f"{path.parent}: holds shards built with other settings ({', '.join(changed)}). "
                             "Fix: use another --work-dir (or --out), or delete that folder to start over")
    else:
        atomic_write_json(path, settings)


# ---------------------------------------------------------------------------------------------------
# command line: tiekd distill-data


def add_arguments(parser) -> None:
    defaults = DistillationOptions()
    parser.add_argument("--teacher", required=True, help="teacher model folder (any Marian / HF seq2seq model, "
                                                         "e.g. OPUS-MT) or its CTranslate2 export")
    parser.add_argument("--source", required=True, help="source sentences, one per line (training or monolingual)")
    parser.add_argument("--references", help="references aligned with --source (needed by --select chrf)")
    parser.add_argument("--out", required=True, help="targets file to write, aligned with --source")
    parser.add_argument("--work-dir", help="shards and the teacher's CTranslate2 export (default: .OUT.work beside --out)")
    parser.add_argument("--engine", choices=ENGINES, default=defaults.engine)
    parser.add_argument("--beam", type=int, default=defaults.beam)
    parser.add_argument("--lenpen", type=float, default=defaults.length_penalty, help="length penalty exponent")
    parser.add_argument("--nbest", type=int, default=defaults.nbest, help="hypotheses kept per sentence (<= beam)")
    parser.add_argument("--select", choices=SELECTIONS, default=defaults.select,
                        help="best: the teacher's 1-best; chrf: the n-best entry with the highest chrF "
                             "against the reference (Bergamot practice; needs --nbest >= 2)")
    parser.add_argument("--max-length", type=int, default=defaults.max_length, help="generated tokens at most")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="sentences per engine call")
    parser.add_argument("--shard-size", type=int, default=defaults.shard_size, help="sentences per resumable shard")
    parser.add_argument("--compute-type", default=defaults.compute_type,
                        help="CTranslate2 compute type: default (the export's float32) or int8 for speed")
    parser.add_argument("--threads", type=int, default=defaults.threads, help="CTranslate2 threads (0: its default)")


def run(args) -> int:
    options = DistillationOptions(engine=args.engine, beam=args.beam, length_penalty=args.lenpen, nbest=args.nbest,
                                  select=args.select, max_length=args.max_length, batch_size=args.batch_size,
                                  shard_size=args.shard_size, compute_type=args.compute_type, threads=args.threads)
    report = build_distilled_data(args.teacher, args.source, args.out, args.references, args.work_dir, options)
    speed = f", {report['sentences_per_s']:.1f} sentences/s" if report["sentences_per_s"] else ""
    print(f"wrote {args.out}: {report['sentences']} targets ({report['empty']} empty, {report['runaway']} runaway, "
          f"{report['not_1best']} chosen below the 1-best{speed}); report in {args.out}.json")
    return 0
