"""Lexical shortlist builder: time and peak memory of the sparse counting against an earlier revision's
counting (every (source token, target token) pair in Python), side by side in one run.

    python benchmarks/bench_shortlist.py --tokenizer runs/converged/teacher/model \
        --source ../shared/data/multi30k/train.de --target ../shared/data/multi30k/train.en \
        --copies 1,10 --baseline-rev 65dbec8

The earlier revision's tiekd/shortlist.py (tiekd/inference/shortlist.py now) is loaded into the current
package, so it imports the current tiekd.data.batching and tiekd.io: both columns tokenize the same way,
and the comparison is of the counting alone. `--copies N` writes the corpus N times over into one file (a
larger corpus with the same distinct token pairs, so it shows growth with the number of sentences, not
with the number of distinct pairs). Every build runs in a fresh process, which reports its wall time and
peak resident memory (VmHWM); the rules of the two are checked to be equal.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fresh_process import measure_in_fresh_process, peak_rss_mb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(spec: dict) -> dict:
    """Build the rules with the current code or with `spec['module']` (a file holding another revision's
    tiekd/shortlist.py, loaded as a module of the tiekd package)."""
    import importlib
    import importlib.util

    from tiekd.data.tokenizer import load_tokenizer

    if spec["module"]:
        # the baseline predates tiekd/data/: its `from .batching import` finds the module under its old name
        sys.modules.setdefault("tiekd.batching", importlib.import_module("tiekd.data.batching"))
        module_spec = importlib.util.spec_from_file_location("tiekd._baseline_shortlist", spec["module"])
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module  # its dataclasses look their module up there
        module_spec.loader.exec_module(module)
    else:
        from tiekd.inference import shortlist as module
    tokenizer = load_tokenizer(spec["tokenizer"])
    started = time.perf_counter()
    always, rules = module.vocabulary_map_rules(tokenizer, spec["source"], spec["target"])
    seconds = time.perf_counter() - started
    digest = hashlib.sha256(json.dumps([always, sorted(rules.items())]).encode()).hexdigest()[:12]
    return {"seconds": seconds, "peak_mb": peak_rss_mb(), "rules": len(rules), "digest": digest}


def in_fresh_process(spec: dict) -> dict:
    return measure_in_fresh_process(__file__, ["--measure", json.dumps(spec)], what=str(spec))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", help="a model or tokenizer folder")
    parser.add_argument("--source")
    parser.add_argument("--target")
    parser.add_argument("--copies", default="1,10", help="corpus sizes, as copies of the given corpus")
    parser.add_argument("--baseline-rev", default="65dbec8", help="git revision whose tiekd/shortlist.py to compare")
    parser.add_argument("--json", help="also write the rows here")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # one build, in the fresh process main() starts
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(json.loads(args.measure))))
        return
    if not (args.tokenizer and args.source and args.target):
        parser.error("give --tokenizer, --source and --target")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        baseline = Path(tmp) / "baseline_shortlist.py"
        baseline.write_text(subprocess.run(["git", "show", f"{args.baseline_rev}:tiekd/shortlist.py"], cwd=ROOT,
                                           check=True, capture_output=True, text=True).stdout)
        # one line end after the last line, so that copies do not run two lines together
        source_text = Path(args.source).read_text(encoding="utf-8").rstrip("\n") + "\n"
        target_text = Path(args.target).read_text(encoding="utf-8").rstrip("\n") + "\n"
        for copies in [int(c) for c in args.copies.split(",")]:
            source, target = Path(tmp) / f"{copies}.src", Path(tmp) / f"{copies}.tgt"
            source.write_text(source_text * copies, encoding="utf-8")
            target.write_text(target_text * copies, encoding="utf-8")
            pairs = source_text.count("\n") * copies
            built = {}
            for name, module in ((f"pairwise counting ({args.baseline_rev})", str(baseline)),
                                 ("sparse counting (this code)", "")):
                built[name] = in_fresh_process({"tokenizer": args.tokenizer, "source": str(source),
                                                "target": str(target), "module": module})
                rows.append({"pairs": pairs, "implementation": name, **built[name]})
            first, second = built.values()
            rows[-1]["speedup"] = first["seconds"] / second["seconds"]
            rows[-1]["same_rules"] = first["digest"] == second["digest"]
            print(f"{pairs:>9,} pairs: pairwise {first['seconds']:7.1f} s, {first['peak_mb']:6.0f} MB | sparse "
                  f"{second['seconds']:7.1f} s, {second['peak_mb']:6.0f} MB | {rows[-1]['speedup']:.2f}x faster, "
                  f"same rules: {rows[-1]['same_rules']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
