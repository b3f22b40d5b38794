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
    from tiekd.experiment.compute_view import late_gain
    from tiekd.experiment.report import _equal_compute_section

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


def _costs(folder: Path, cpu_s_per_update: dict) -> None:
    rows = [{"method": name, "cpu_s_per_update": cost} for name, cost in cpu_s_per_update.items()]
    args = {"student": "tiny", "max_tokens": 4096}
    (folder / "update_costs.json").write_text(json.dumps({"results": rows, "args": args}))


def _settings(folder: Path, **settings) -> None:
    import yaml

    settings = {"model": "tiny", "max_tokens": 4096, "max_updates": 200, **settings}
    (folder / "run" / "config.yaml").write_text(yaml.safe_dump(settings))


def test_measured_update_costs_replace_the_logged_cpu_time(tmp_path):
    """With update_costs.json the x axis is the sum of each update's measured cost: TIE-KD's updates
    before iterative_start_update cost one pass, seq-KD's a No-KD update; the logged time is ignored."""
    from tiekd.experiment.compute_view import load_update_costs, validation_curve
    from tiekd.experiment.report import _equal_compute_section

    # the logged hours (1 per point) would make every row equal: the measured costs must decide
    _run(tmp_path / "none", [(100, 1.0, 10.0), (200, 1.0, 20.0)])
    _settings(tmp_path / "none", method="none")
    _run(tmp_path / "tie", [(100, 1.0, 15.0), (200, 1.0, 25.0)])
    _settings(tmp_path / "tie", method="tie-kd", iterative_passes=3, iterative_start_update=0)
    _run(tmp_path / "late", [(100, 1.0, 12.0), (200, 1.0, 24.0)])
    _settings(tmp_path / "late", method="tie-kd", iterative_passes=3, iterative_start_update=150)
    _run(tmp_path / "seq", [(200, 1.0, 21.0)])
    _settings(tmp_path / "seq", method="seq-kd")
    _costs(tmp_path, {"none": 1.8, "tie-kd": 4.5, "tie-kd:3": 10.8})
    costs = load_update_costs(tmp_path / "update_costs.json")
    assert costs.per_update == {"none": 1.8, "tie-kd:1": 4.5, "tie-kd:3": 10.8}
    assert validation_curve(tmp_path / "none" / "run", costs) == [(0.05, 10.0), (0.1, 20.0)]
    assert validation_curve(tmp_path / "tie" / "run", costs) == [(0.3, 15.0), (0.6, 25.0)]
    hours = [h for h, _ in validation_curve(tmp_path / "late" / "run", costs)]
    assert hours == [100 * 4.5 / 3600, (150 * 4.5 + 50 * 10.8) / 3600]
    assert validation_curve(tmp_path / "seq" / "run", costs) == [(0.1, 21.0)]
    rows = [{"name": name, "size": "tiny", "seed": 1, "folder": str(tmp_path / name)}
            for name in ("none", "tie", "late", "seq")]
    section = "\n".join(_equal_compute_section(rows, tmp_path))
    assert "measured side by side in `update_costs.json`" in section
    assert "| tie | tiny | 1 | 0.60 | 25.00 |" in section


def test_one_pass_with_a_late_start_counts_every_update():
    """N = 1 with iterative_start_update > 0: both spans are one-pass updates, none is dropped."""
    from tiekd.experiment.compute_view import UpdateCosts, updates_cost

    costs = UpdateCosts({"tie-kd:1": 4.5}, "tiny", 4096)
    settings = {"method": "tie-kd", "iterative_passes": 1, "iterative_start_update": 150}
    assert updates_cost(settings, 200, costs) == 200 * 4.5


def test_rows_the_costs_cannot_price_are_left_out_and_named(tmp_path):
    """Another student size, batch or accumulation, or an unmeasured method: the row is left out of the
    equal-compute view with the reason; the report itself is still written."""
    from tiekd.experiment.report import _equal_compute_section

    _run(tmp_path / "none", [(100, 1.0, 10.0), (200, 1.0, 20.0)])
    _settings(tmp_path / "none", method="none")
    _run(tmp_path / "jsd", [(100, 1.0, 11.0)])
    _settings(tmp_path / "jsd", method="jsd")
    _run(tmp_path / "small", [(100, 1.0, 12.0)])
    _settings(tmp_path / "small", method="none", model="small")
    _run(tmp_path / "accum", [(100, 1.0, 13.0)])
    _settings(tmp_path / "accum", method="none", update_freq=2)
    _costs(tmp_path, {"none": 1.8})
    rows = [{"name": name, "size": "tiny", "seed": 1, "folder": str(tmp_path / name)}
            for name in ("none", "jsd", "small", "accum")]
    section = "\n".join(_equal_compute_section(rows, tmp_path))
    assert "| none | tiny | 1 | 0.10 | 20.00 |" in section
    assert "| jsd |" not in section and "| small |" not in section and "| accum |" not in section
    assert "- jsd (tiny) seed 1: no measured cost for jsd" in section
    assert "- small (tiny) seed 1: measured for `tiny` students with 4096-token batches, the run is `small`" in section
    assert "- accum (tiny) seed 1: measured at one batch per update, the run accumulates 2" in section


def test_a_broken_cost_file_is_named_with_the_fix(tmp_path):
    import pytest

    from tiekd.errors import TiekdError
    from tiekd.experiment.compute_view import load_update_costs

    (tmp_path / "update_costs.json").write_text('{"results": [{"method": "none"}]}')
    with pytest.raises(TiekdError, match="update_costs.json: not a bench_train_step result.*Fix"):
        load_update_costs(tmp_path / "update_costs.json")
    assert load_update_costs(tmp_path / "absent.json") is None


def test_a_rows_own_cost_as_a_budget_includes_its_last_validation():
    """4.121 core-hours is shown as the budget 4.13, not 4.12, so the row's end is within it."""
    from tiekd.experiment.compute_view import equal_compute_rows

    row = {"name": "tie", "size": "tiny", "seed": 1}
    lines = equal_compute_rows([(row, [(2.0, 30.0), (4.121, 40.0)])])
    assert list(lines[0]["within"]) == [4.13]
    assert lines[0]["within"][4.13] == 40.0 == lines[0]["final_bleu"]


def test_plot_styles_stay_distinct_past_ten_rows():
    """tab10 has ten colours; the converged table has 11 methods, and row 11 drew in row 1's blue."""
    from tiekd.experiment.compute_view import line_style

    styles = [line_style(i) for i in range(40)]
    assert len(set(styles)) == 40
    assert line_style(10)[0] == line_style(0)[0] and line_style(10)[1:] != line_style(0)[1:]
