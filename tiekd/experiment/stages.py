"""The work of each experiment stage, as functions of their inputs: prepare the data, train a run (in this
process or under torchrun), translate and score the test sets, measure top-1 agreement, and name a row's folder.

`Pipeline` (pipeline.py) decides which stages run, skips the finished ones and records each in its
`stage.json`; these functions only do the work, so that they can be read and tested on their own.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from ..errors import TiekdError


def prepare_inputs(config) -> list:
    """What the prepare stage's hash covers. For Multi30k exactly what it covered before other data
    could be named, so that experiment folders made then keep resuming."""
    if config.data is None or list(config.data) == ["multi30k"]:
        named = config.multi30k if config.data is None else config.data["multi30k"]
        inputs = [named, config.src_lang, config.tgt_lang, config.vocab_size, config.train_pairs, config.test_sets]
    else:
        inputs = [{"data": config.data}, config.src_lang, config.tgt_lang, config.vocab_size, config.train_pairs,
                  config.test_sets]
    if config.teacher_model:  # the data is encoded with that teacher's own tokenizer
        inputs.append({"tokenizer": str(config.teacher_model)})
    return inputs


def prepare(out: Path, config, source) -> Path:
    """`tiekd prepare` of the experiment's data `source` (tiekd.data.source) into out/data."""
    from ..data.prepare import prepare_data
    from ..data.source import head_slice

    data = out / "data"
    tokenizer = config.teacher_model or (source.path / "tokenizer" if source.kind == "prepared" else None)
    common = dict(src_lang=config.src_lang, tgt_lang=config.tgt_lang, vocab_size=config.vocab_size,
                  verbose=False, tokenizer=tokenizer)
    if source.kind == "multi30k" and not config.train_pairs:
        prepare_data(data, multi30k_dir=source.path, **common)
        return data
    if source.kind == "hf_dataset":  # its rows as text files beside the prepared data, then as files
        from ..data.source import export_hf_splits

        source.splits.update(export_hf_splits(source, out / "hf_text", config.src_lang, config.tgt_lang,
                                              ["train", "valid", *config.test_sets]))
    train = source.splits["train"]
    if config.train_pairs:
        # a deterministic head slice, written beside the prepared data so prepare can fingerprint it
        train = head_slice(train, config.train_pairs, out / "slice", "train")
    tests = {name: source.splits[name] for name in config.test_sets}
    prepare_data(data, valid=source.splits["valid"], tests=tests,
                 **({"tsv_train": train} if isinstance(train, Path) else {"train": train}), **common)
    return data


def train(folder: Path, settings: dict, device: str, average_last: int, nproc_per_node: int, log,
          teacher_cache: str | None = None) -> dict:
    """Train (or resume) one run in folder/run and average its last `average_last` checkpoints into
    folder/model; with `nproc_per_node` > 1 the training runs under torchrun. `teacher_cache`, a folder,
    is given to the rows whose method runs the teacher on gold prefixes; like the device, it is not part
    of the row's settings (it changes where the teacher's logits come from, not their values)."""
    from ..config import RunConfig
    from ..kd.methods import get_method, runs_teacher_on_gold
    from ..training.average import average_checkpoints, find_last_checkpoints
    from ..training.trainer import run_training

    run = folder / "run"
    execution = {"out": str(run), "device": device}
    if teacher_cache and runs_teacher_on_gold(get_method(settings.get("method", "none"))):
        execution["teacher_cache"] = str(teacher_cache)
    config = RunConfig.from_dict({**settings, **execution}, source=str(folder))
    resume = (run / "config.yaml").is_file()
    if nproc_per_node > 1:
        summary = _train_under_torchrun(folder, config, resume, nproc_per_node, log)
    else:
        summary = run_training(config, resume=resume, overwrite=not resume)
    if summary["interrupted"]:  # never record a half-trained model as a finished stage
        raise TiekdError(f"{run}: training was stopped by a signal at update {summary['step']}. Fix: rerun the "
                         "same command to resume it")
    average_checkpoints(find_last_checkpoints(run, average_last), folder / "model", overwrite=True)
    return summary


def _train_under_torchrun(folder: Path, config, resume: bool, nproc_per_node: int, log) -> dict:
    """One training stage as `torchrun --nproc_per_node N -m tiekd distill --config <stage file>`: N
    data-parallel processes (one per GPU, or gloo on CPUs) with the global batch of update_freq x N
    batches, while the experiment's process keeps the single-process stages (prepare, averaging, decoding,
    scoring). A stop signal to that process is passed on: the ranks save a checkpoint, the stage resumes later."""
    import signal
    import subprocess
    import sys

    stage_file = folder / "stage-run.yaml"
    config.save(stage_file)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
               "-m", "tiekd", "distill", "--allow-no-kd", "--config", str(stage_file),
               "--resume" if resume else "--overwrite"]
    log(f"{folder.name}: training on {nproc_per_node} processes (torchrun)")
    child = subprocess.Popen(command)
    forward = lambda signum, _frame: child.send_signal(signum)  # noqa: E731
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    summary_file = Path(config.out) / "summary.json"
    if status != 0 or not summary_file.is_file():
        raise TiekdError(f"{folder}: training under torchrun ended with status {status}. Fix: read its output "
                         "above; rerun the same command to resume from the last checkpoint")
    return json.loads(summary_file.read_text(encoding="utf-8"))


def evaluate(model_dir: Path, folder: Path, data: Path, config, device: str) -> dict:
    """Translate each test set of `config.test_sets` with `model_dir` into folder/<test>.hyp and score it."""
    from ..data.prepare import load_prepared
    from ..data.tokenizer import load_tokenizer
    from ..evaluation.evaluate import score
    from ..inference.translate import DecodeOptions, translate_sentences
    from ..io import atomic_write_text, read_lines
    from ..models import load_model
    from ..training.trainer import pick_device

    prepared = load_prepared(data)
    device = pick_device(device)
    model, tokenizer = load_model(model_dir, device), load_tokenizer(model_dir)
    folder.mkdir(parents=True, exist_ok=True)
    scores = {}
    for name in config.test_sets:
        if name not in prepared.splits:
            known = ", ".join(n for n in prepared.splits if n not in ("train", "valid")) or "none"
            raise TiekdError(f"{data}: holds no test set {name!r} (it holds: {known}). Fix: name one of those "
                             "in test_sets, or add the test set to the experiment's data")
        src, ref = prepared.splits[name]
        n = config.test_max_sentences or None
        started = time.perf_counter()
        hyps = translate_sentences(model, tokenizer, read_lines(src)[:n],
                                   DecodeOptions(beam=config.beam, length_penalty=config.length_penalty,
                                                 max_length=config.max_decode_length), device)
        seconds = time.perf_counter() - started
        atomic_write_text(folder / f"{name}.hyp", "".join(h + "\n" for h in hyps))
        result = score(hyps, read_lines(ref)[:n], tokenized_bleu=True, lang=config.tgt_lang)
        scores[name] = {"bleu": result["bleu"], "chrf": result["chrf"], "tokenized_bleu": result["tokenized_bleu"],
                        "bleu_signature": result["bleu_signature"], "chrf_signature": result["chrf_signature"],
                        "decode_seconds": round(seconds, 1)}
    return scores


def analyze(student: Path, teacher: Path, data: Path, config, device: str) -> dict:
    """Top-1 agreement of `student` with `teacher` on the first `config.analyze_sentences` validation pairs."""
    from ..data.prepare import load_prepared
    from ..data.tokenizer import load_tokenizer
    from ..evaluation.agreement import agreement_statistics
    from ..io import read_lines
    from ..models import load_model
    from ..training.trainer import pick_device

    prepared = load_prepared(data)
    src, tgt = prepared.splits["valid"]
    n = config.analyze_sentences or None
    device = pick_device(device)
    return agreement_statistics(load_model(student, device), load_model(teacher, device), load_tokenizer(student),
                                read_lines(src)[:n], read_lines(tgt)[:n], device=device)


def file_safe(name: str) -> str:
    """Lower case, with every run of characters other than letters, digits, '.' and '-' made one '-'."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9.-]", "-", name.lower())).strip("-")


def row_slug(name: str, size: str, seed: int) -> str:
    """A row's folder name: lower case, letters, digits, '.' and '-' only, so that it needs no quoting in a
    shell and is valid on every file system ("on-policy KD (JSD, lambda 0.5)" -> "on-policy-kd-jsd-lambda-0.5")."""
    return f"{file_safe(name)}-{file_safe(size)}-seed{seed}"


def student_folder(out: Path, name: str, size: str, seed: int, log) -> Path:
    """out/students/<row_slug>. A finished row of an older tiekd, whose folder names kept characters such as ':'
    and '(', is renamed to the new name; an unfinished one keeps its old folder, so its resume loses nothing."""
    folder = out / "students" / row_slug(name, size, seed)
    old = out / "students" / f"{name.lower().replace(' ', '-').replace('/', '-')}-{size}-seed{seed}"
    if old != folder and old.is_dir() and not folder.exists():
        if not (old / "stage.json").is_file():
            return old
        old.rename(folder)
        log(f"renamed students/{old.name} to students/{folder.name} (file-safe row names)")
    return folder
