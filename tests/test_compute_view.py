"""The equal-compute section of the report: validation BLEU against training core-hours."""

from __future__ import annotations

import json
from pathlib import Path


def _run(folder: Path, points: list[tuple[int, float, float]]) -> None:
    (folder / "run").mkdir(parents=True)
    lines = [json.dumps({"kind": "train", "step": 1, "loss": 1.0})]
    lines += [json.dumps({"kind": "valid", "step": step, "bleu": bleu, "train_core_seconds": 3600 * hours})
              for step, hours, bleu in points]
    (folder / "run" / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_equal_compute_table_plot_and_late_gain(tmp_path):
    from tiekd.compute_view import late_gain
    from tiekd.report import _equal_compute_section

    _run(tmp_path / "a1", [(100, 0.5, 10.0), (200, 1.0, 20.0)])
    _run(tmp_path / "a2", [(100, 0.5, 12.0), (200, 1.0, 22.0)])
    _run(tmp_path / "b", [(100, 1.0, 15.0), (200, 2.0, 30.0), (400, 4.0, 30.2)])
    rows = [{"name": "A", "size": "tiny", "seed": 1, "folder": str(tmp_path / "a1")},
            {"name": "A", "size": "tiny", "seed": 2, "folder": str(tmp_path / "a2")},
            {"name": "B", "size": "tiny", "seed": 1, "folder": str(tmp_path / "b")}]
    section = "\n".join(_equal_compute_section(rows, tmp_path))
    assert (tmp_path / "bleu_by_core_hours.png").stat().st_size > 0
    # budgets are the rows' own totals (1 h and 4 h); A is the mean of its seeds, B its first validation by 1 h
    assert "| A | tiny | 2 | 1.00 | 21.00 | 21.00 | 21.00 |" in section
    assert "| B | tiny | 1 | 4.00 | 30.20 | 15.00 | 30.20 |" in section
    assert late_gain(tmp_path / "b" / "run") == 30.2 - 30.0  # last vs the last at <= 75% of 400 updates
    assert _equal_compute_section([], tmp_path) == []
