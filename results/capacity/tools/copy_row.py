"""Copy a finished row of the capacity experiment into the repository: its translations, stage.json (the
scores) and the run's config, metrics and summary, never its weights; the local folders these files name
are replaced by placeholders (`<runs>`, `<worktree>`, `../shared`), so that nothing tracked names a
machine's folders.

    python results/capacity/tools/copy_row.py --experiment RUNS/capacity2 --worktree WORKTREE \\
        --out results/capacity/table word-kd-mini-seed1 [more rows]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

# the run's files a kept row carries besides its translations and stage.json (restore_rows.py reads them back)
RUN_FILES = ("run/config.yaml", "run/metrics.jsonl", "run/summary.json")


def placeholders(experiment: Path, worktree: Path | None, shared: Path | None) -> list[tuple[str, str]]:
    """(local prefix, placeholder) pairs, longest first so that a folder inside another is named by its own."""
    pairs = [(str(experiment.resolve().parent) + "/", "<runs>/")]
    if worktree is not None:
        pairs.append((str(worktree.resolve()) + "/", "<worktree>/"))
    if shared is not None:
        pairs.append((str(shared.resolve()) + "/", "../shared/"))
    return sorted(pairs, key=lambda pair: len(pair[0]), reverse=True)


def copy_row(experiment: Path, row: str, out: Path, pairs: list[tuple[str, str]]) -> Path:
    source = experiment / "students" / row
    if not (source / "stage.json").is_file():
        raise SystemExit(f"{source}: not finished (no stage.json). Fix: wait for the row, or name a finished one")
    target = out / row
    (target / "run").mkdir(parents=True, exist_ok=True)
    for hyp in sorted(source.glob("*.hyp")):
        shutil.copy(hyp, target / hyp.name)
    for name in ("stage.json", *RUN_FILES):
        text = (source / name).read_text(encoding="utf-8")
        for prefix, placeholder in pairs:
            text = text.replace(prefix, placeholder)
        (target / name).write_text(text, encoding="utf-8")
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="row folders under EXPERIMENT/students, e.g. word-kd-mini-seed1")
    parser.add_argument("--experiment", type=Path, required=True)
    parser.add_argument("--worktree", type=Path, help="the checkout the experiment ran from")
    parser.add_argument("--shared", type=Path, help="the shared data folder (Multi30k's parent)")
    parser.add_argument("--out", type=Path, default=Path("results/capacity/table"))
    args = parser.parse_args()
    pairs = placeholders(args.experiment, args.worktree, args.shared)
    # the experiment's top-level folder (e.g. /home or /data): no copied file may still name a path under it
    forbidden = str(Path(*args.experiment.resolve().parts[:2])) + "/"
    for row in args.rows:
        target = copy_row(args.experiment, row, args.out, pairs)
        left = [path for path in target.rglob("*") if path.is_file() and forbidden in path.read_text(errors="ignore")]
        if left:
            raise SystemExit(f"{left[0]}: still names a path under {forbidden}. Fix: pass the folder it names as "
                             "--worktree or --shared")
        print(f"{row}: copied to {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
