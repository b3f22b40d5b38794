"""The `tiekd` command: every subcommand only parses arguments and calls the library.

    tiekd prepare     parallel text -> cleaned splits + joint SentencePiece tokenizer
    tiekd models      size presets and their parameter counts
    tiekd train       train a model (teacher or student) with label-smoothed CE
    tiekd distill     train a student from a teacher (word-KD, seq-KD, TIE-KD, Selective-KD, ...)
    tiekd average     average the last N checkpoints of a run into a model folder
    tiekd translate   beam search / greedy decoding, file or stdin to file or stdout
    tiekd evaluate    sacreBLEU BLEU and chrF, paired bootstrap against a baseline
    tiekd analyze     top-1 agreement and teacher-gold overlap of a student and a teacher
    tiekd experiment  the whole pipeline from a preset or YAML (prepare, teacher, students, tables)
    tiekd export      CTranslate2 export for fast inference
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import typing
from pathlib import Path

from .errors import TiekdError
from .training.malloc_tuning import tune_for_command
from .training.process_exit import run_and_exit
from .writes import STORAGE_ERRNOS, failure_message


def _add_run_config_arguments(parser: argparse.ArgumentParser, distill: bool) -> None:
    """One flag per RunConfig field (`tiekd train` leaves out the distill-only ones), typed from its
    annotation and documented by its metadata. Every default is None, so that only the flags given
    override `--config FILE` (the dataclass supplies the real defaults, shown in the help)."""
    from .config import RunConfig, field_types, flag_name

    parser.add_argument("--config", help="YAML file of run settings (command-line flags override it)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from its last good checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    types = field_types()
    for field in dataclasses.fields(RunConfig):
        if field.metadata["distill_only"] and not distill:
            continue
        kind = types[field.name]
        options = {"dest": field.name, "default": None, "help": _field_help(field)}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction  # --valid-bleu / --no-valid-bleu
        elif typing.get_origin(kind) is tuple:  # e.g. --adam-betas 0.9 0.98
            options.update(type=typing.get_args(kind)[0], nargs=len(typing.get_args(kind)))
        else:  # int, float, str, or one of them | None
            options["type"] = next(t for t in (int, float, str) if kind is t or t in typing.get_args(kind))
        parser.add_argument(flag_name(field.name), **options)
    parser.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)


def _field_help(field: dataclasses.Field) -> str:
    """The field's help, then its allowed values and default: "peak learning rate (> 0; default: 0.0007)"."""
    from .config_fields import Bounds

    meta = field.metadata
    allowed = None
    if meta["bounds"]:
        allowed = Bounds.parse(meta["bounds"]).describe()
    elif meta["choices"]:
        allowed = "one of " + ", ".join(meta["choices"])
    elif meta["pattern"]:
        allowed = meta["pattern"][1]
    notes = ([allowed] if allowed else []) + ([f"default: {field.default}"] if field.default != "" else [])
    # argparse formats help with %-style placeholders: a literal % must be doubled
    return f"{meta['help']} ({'; '.join(notes)})".replace("%", "%%")


def _run_config_from_args(args: argparse.Namespace):
    """The RunConfig of `--config FILE` (or, with --resume, the run's saved config.yaml) with the flags
    given on top; errors name each key as the user wrote it (a flag, or the file's line)."""
    from .config import RunConfig, load_config_file

    values = load_config_file(args.config) if args.config else {}
    source = args.config or "configuration"
    if args.resume and not args.config and args.out:
        saved = Path(args.out) / "config.yaml"
        if saved.is_file():
            values = load_config_file(saved)
            source = str(saved)
    from_file = set(values)
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(RunConfig)
             if getattr(args, field.name, None) is not None}
    values.update(given)
    # a key is named as a flag when it came from one, or from nowhere (a default) and this command has the flag
    flags = set(given) | {f.name for f in dataclasses.fields(RunConfig) if hasattr(args, f.name)} - from_file
    config = RunConfig.from_dict(values, source=source, flags=flags)
    missing = [name for name in ("data", "out") if not getattr(config, name)]
    if missing:
        raise TiekdError(f"missing {', '.join('--' + m for m in missing)}. Fix: name the prepared data "
                         "folder (--data) and a run folder (--out)")
    return config


def _cmd_train(args: argparse.Namespace) -> int:
    from .training.trainer import run_training

    config = _run_config_from_args(args)
    from .kd.methods import METHODS

    if args.command == "distill" and not METHODS[config.method].needs_teacher and not args.allow_no_kd:
        with_teacher = ", ".join(name for name, method in METHODS.items() if method.needs_teacher)
        raise TiekdError(f"tiekd distill needs --method ({with_teacher}). "
                         "Fix: pass --method, or use `tiekd train` for no KD")
    if not config.max_updates and not config.max_epochs:  # the trainer refuses it too, but after writing --out
        raise TiekdError("neither max_updates nor max_epochs is set. Fix: pass --max-updates or --max-epochs")
    summary = run_training(config, resume=args.resume, overwrite=args.overwrite)
    return 0 if summary else 1


def _cmd_models(args: argparse.Namespace) -> int:
    from .data.tokenizer import load_tokenizer
    from .models import describe_presets

    tokenizer = load_tokenizer(args.tokenizer)
    print(f"{'preset':17} {'params':>10} {'d_model':>7} {'enc/dec':>7} {'heads':>5} {'ffn':>5}  (vocab {len(tokenizer.get_vocab())})")
    for name, count, preset in describe_presets(tokenizer):
        layers = f"{preset.encoder_layers}/{preset.decoder_depth}"
        print(f"{name:17} {count / 1e6:9.2f}M {preset.d_model:7d} {layers:>7} {preset.heads:5d} {preset.ffn_dim:5d}")
    return 0


def _cmd_average(args: argparse.Namespace) -> int:
    from .training.average import average_checkpoints, find_last_checkpoints

    folders = [Path(f) for f in args.checkpoints] if args.checkpoints else find_last_checkpoints(args.run, args.last)
    out = average_checkpoints(folders, Path(args.out), overwrite=args.overwrite)
    print(f"averaged {len(folders)} checkpoints ({', '.join(f.name for f in folders)}) into {out}")
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    from .inference.translate_cli import run_translate

    return run_translate(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiekd", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    from .data.prepare import add_prepare_arguments, run_prepare

    p = sub.add_parser("prepare", help="check parallel text, train the tokenizer, write a prepared-data folder")
    add_prepare_arguments(p)
    p.set_defaults(func=run_prepare)

    p = sub.add_parser("models", help="list model size presets with parameter counts")
    p.add_argument("--tokenizer", required=True, help="tokenizer folder (prepared data's tokenizer/ or a model)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train a model with label-smoothed cross-entropy")
    _add_run_config_arguments(p, distill=False)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("distill", help="train a student from a frozen teacher")
    _add_run_config_arguments(p, distill=True)
    p.add_argument("--allow-no-kd", action="store_true", help="accept --method none (the No-KD baseline)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("average", help="average the last N checkpoints of a run into a model folder")
    p.add_argument("run", nargs="?", help="run folder (its checkpoints/step_*)")
    p.add_argument("--checkpoints", nargs="+", help="explicit model/checkpoint folders instead of a run")
    p.add_argument("--last", type=int, default=5, help="how many of the newest checkpoints (default 5)")
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_average)

    from .inference.translate_cli import add_translate_arguments

    p = sub.add_parser("translate", help="translate a file or stdin with beam search or greedy decoding")
    add_translate_arguments(p)
    p.set_defaults(func=_cmd_translate)

    from .evaluation.evaluate import add_evaluate_arguments, run_evaluate

    p = sub.add_parser("evaluate", help="BLEU/chrF with signatures; paired bootstrap against a baseline")
    add_evaluate_arguments(p)
    p.set_defaults(func=run_evaluate)

    from .inference.export import add_export_arguments, run_export

    p = sub.add_parser("export", help="export a model to CTranslate2 (int8 by default)")
    add_export_arguments(p)
    p.set_defaults(func=run_export)

    # imported directly: a module that fails to import is a broken install, reported as such, never a
    # command that silently goes missing from the list
    from .evaluation import agreement
    from .experiment import pipeline
    from .inference import distilled_data

    for name, module, help_text in (
            ("analyze", agreement, None),
            ("experiment", pipeline, None),
            ("distill-data", distilled_data, "the teacher translates training or monolingual sources into "
                                             "targets for sequence-level KD (CTranslate2, n-best, chrF selection)")):
        p = sub.add_parser(name, help=help_text or module.__doc__.splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(func=module.run)
    return parser


def _quiet_transformers() -> None:
    """Silence transformers' per-save progress bars and advisory warnings, which would bury tiekd's own
    progress output. Only the command line does this: importing tiekd as a library changes no one's logging."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        # after parsing: --help and a mistyped flag answer at once, without importing transformers (seconds)
        _quiet_transformers()
        # before training allocates: its [tokens, vocab] temporaries then reuse the heap's pages
        tune_for_command(args.command)
        code = args.func(args)
    except TiekdError as error:
        if debug:
            raise
        print(f"tiekd: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if debug or error.errno not in STORAGE_ERRNOS:
            raise
        # a storage failure outside tiekd.writes (a library writing on its own): name the file and the fix
        print(f"tiekd: error: {failure_message(error.filename or Path.cwd(), error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tiekd: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def run() -> typing.NoReturn:
    """The `tiekd` command, `python -m tiekd` and `torchrun -m tiekd`: main, then the process's end
    (a torchrun rank skips interpreter shutdown: tiekd.training.process_exit.run_and_exit)."""
    run_and_exit(main)


if __name__ == "__main__":
    run()
