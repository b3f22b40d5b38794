"""Which files a run trains and validates on.

The training targets are the prepared data's own, or with sequence-level KD (Kim & Rush 2016:
`--method seq-kd`, or `--seq-kd-targets` under another method) the teacher's beam translations of the
training sources, decoded once into the run folder by tiekd/inference/distilled_data.py and reused on resume:
with CTranslate2 (the default; n-best lists and chrF selection) or with `generate` on the loaded teacher.
"""

from __future__ import annotations

from pathlib import Path

from ..config import RunConfig
from .distributed import DistInfo
from ..errors import TiekdError


def split_files(prepared, name: str) -> tuple[Path, Path]:
    """(source, target) files of split `name` of a prepared-data folder."""
    if name not in prepared.splits:
        raise TiekdError(f"{prepared.path}: no split {name!r} (it has {', '.join(prepared.splits)}). "
                         "Fix: name one of those splits")
    return prepared.splits[name]


def uses_teacher_targets(config: RunConfig) -> bool:
    from ..kd.methods import get_method

    return config.seq_kd_targets or get_method(config.method).teacher_targets


def teacher_targets_file(out: Path) -> Path:
    """Where a run keeps its teacher's translations of the training sources."""
    return Path(out) / "seqkd" / "train.hyp"


def training_pair_files(config: RunConfig, prepared, teacher, out: Path, dist: DistInfo,
                        quiet: bool, tokenizer) -> tuple[Path, Path]:
    """(source, target) files of the training split; with sequence-level KD the target file is the
    teacher's translations (`out/seqkd/train.hyp`; every rank takes part in decoding them), whose ids are
    then stored beside it once (with `tokenizer`), so that no start encodes them again. `teacher` is the
    loaded teacher, needed only by the pytorch engine."""
    source, target = split_files(prepared, config.train_split)
    if not uses_teacher_targets(config):
        return source, target
    hyp = teacher_targets_file(out)
    if not hyp.is_file():  # a resumed run keeps its targets
        _decode_teacher_targets(config, source, target, hyp, teacher, dist, quiet)
    _store_ids_beside(hyp, tokenizer, dist)
    return source, hyp


def _store_ids_beside(hyp: Path, tokenizer, dist: DistInfo) -> None:
    """Rank 0 writes the targets' ids beside them unless current ones are there; the others wait for it."""
    from ..data.binarized import binarize_beside, record_beside
    from .distributed import open_long_waits, wait_for_all

    open_long_waits(dist)  # encoding tens of millions of lines takes minutes: past the default group's wait
    needed = record_beside(hyp, len(tokenizer), target=True) is None
    wait_for_all(dist)  # every rank has looked before rank 0 writes, so all decide alike
    if needed:
        if dist.is_main:
            binarize_beside(hyp, tokenizer, target=True)
        wait_for_all(dist)


def _decode_teacher_targets(config: RunConfig, source: Path, target: Path, hyp: Path, teacher, dist: DistInfo,
                            quiet: bool) -> None:
    work = hyp.parent
    from ..inference.distilled_data import DistillationOptions, build_distilled_data

    options = DistillationOptions(engine=config.seq_kd_engine, beam=config.seq_kd_beam, nbest=config.seq_kd_nbest,
                                  select=config.seq_kd_select)
    # every rank decodes its share of the shards; the pytorch engine decodes with the loaded teacher
    build_distilled_data(config.teacher, source, hyp, target if config.seq_kd_select == "chrf" else None,
                         work_dir=work / "shards-work", options=options, quiet=quiet, dist=dist,
                         model=teacher if config.seq_kd_engine == "pytorch" else None)
