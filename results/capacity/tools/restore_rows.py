"""Put finished rows kept in the repository (by copy_row.py) back into an experiment folder, so that a run
whose folder was lost resumes without training them again: the inverse of copy_row.py.

    python results/capacity/tools/restore_rows.py --experiment RUNS/capacity2 --worktree WORKTREE \\
        --shared ../shared --rows results/capacity/table [ROW ...]

Each row gets back its translations, stage.json and run/{config.yaml,metrics.jsonl,summary.json}, with the
placeholders copy_row.py wrote (`<runs>`, `<worktree>`, `../shared`) replaced by this machine's folders.
The pipeline counts a student stage as finished when its stage.json records the same settings hash, and
that hash does not depend on where the folders are (Pipeline.portable), so the restored rows are skipped,
enter the report, and the table tool reads them as before.

What cannot come back is the weights (never committed). The row's `model/` gets only the config.json of
its size, which is all the report reads (the parameter count); `restored.json` says so, and the model
cannot be translated with or timed. A row that already has a stage.json is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # copy_row.py beside it, whose placeholders this undoes

from copy_row import RUN_FILES, placeholders  # noqa: E402


def local_folders(experiment: Path, worktree: Path | None, shared: Path | None) -> list[tuple[str, str]]:
    """(placeholder, local prefix) pairs: copy_row.placeholders the other way round."""
    return [(placeholder, local) for local, placeholder in placeholders(experiment, worktree, shared)]


def restore_row(kept: Path, experiment: Path, pairs: list[tuple[str, str]], tokenizer) -> Path:
    """Write the kept row `kept` (a copy_row.py folder) to EXPERIMENT/students/<its name>."""
    from tiekd.models import build_model

    target = experiment / "students" / kept.name
    if (target / "stage.json").is_file():
        raise SystemExit(f"{target}: already finished (it has a stage.json); not overwritten. Fix: leave the row "
                         "out of the command")
    missing = [name for name in ("stage.json", *RUN_FILES) if not (kept / name).is_file()]
    if missing:
        raise SystemExit(f"{kept}: no {missing[0]}, so it is not a row copy_row.py kept. Fix: name a folder of "
                         "results/capacity/table (or long_schedule)")
    size = json.loads((kept / "stage.json").read_text())["settings"]["student"]["model"]

    def localized(name: str) -> str:
        text = (kept / name).read_text(encoding="utf-8")
        for placeholder, local in pairs:
            text = text.replace(placeholder, local)
        return text

    (target / "run").mkdir(parents=True, exist_ok=True)
    for hyp in sorted(kept.glob("*.hyp")):
        shutil.copy(hyp, target / hyp.name)
    for name in RUN_FILES:
        (target / name).write_text(localized(name), encoding="utf-8")
    build_model(size, tokenizer).config.save_pretrained(target / "model")
    (target / "restored.json").write_text(json.dumps(
        {"from": str(kept), "weights": "not kept; model/ holds only the size's config"}, indent=1) + "\n")
    # stage.json last: until it is written, the pipeline sees an unfinished row and would retrain it
    (target / "stage.json").write_text(localized("stage.json"), encoding="utf-8")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="row folders under --rows (default: all of them)")
    parser.add_argument("--rows", type=Path, required=True, help="the kept rows, e.g. results/capacity/table")
    parser.add_argument("--experiment", type=Path, required=True, help="the experiment folder to put them in")
    parser.add_argument("--worktree", type=Path, help="the checkout the experiment runs from")
    parser.add_argument("--shared", type=Path, help="the shared data folder (Multi30k's parent)")
    parser.add_argument("--tokenizer-model", type=Path, default=ROOT / "models" / "multi30k-de-en-teacher",
                        help="a model folder with the rows' tokenizer (the teacher's; it sets the vocabulary size)")
    args = parser.parse_args()
    from tiekd.data.tokenizer import load_tokenizer

    names = args.names or sorted(path.name for path in args.rows.iterdir() if (path / "stage.json").is_file())
    unknown = [name for name in names if not (args.rows / name).is_dir()]
    if unknown:
        raise SystemExit(f"{args.rows / unknown[0]}: no such row. Fix: name a folder under {args.rows}")
    tokenizer = load_tokenizer(args.tokenizer_model)
    pairs = local_folders(args.experiment, args.worktree, args.shared)
    for name in names:
        print(f"{name}: restored to {restore_row(args.rows / name, args.experiment, pairs, tokenizer)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
