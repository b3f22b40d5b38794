"""The capacity-gap view (tiekd/experiment/size_view.py): Student's t in closed form, and the table by student size."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest


@pytest.mark.parametrize("t, dof", [(12.706, 1), (4.303, 2), (3.182, 3), (2.776, 4), (2.571, 5), (2.447, 6),
                                    (2.365, 7), (2.228, 10), (2.086, 20)])
def test_the_t_distribution_gives_the_tabled_two_sided_5_percent_points(t, dof):
    from tiekd.experiment.size_view import t_test_p

    assert t_test_p(t, dof) == pytest.approx(0.05, abs=2e-4)
    assert t_test_p(-t, dof) == t_test_p(t, dof) and t_test_p(0.0, dof) == pytest.approx(1.0)


def test_the_closed_forms_for_1_and_2_degrees_of_freedom():
    from tiekd.experiment.size_view import t_test_p

    for t in (0.3, 1.0, 4.0):
        assert t_test_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t))  # the Cauchy
        assert t_test_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t))


def test_paired_over_seeds_is_the_naive_t_statistic():
    from tiekd.experiment.size_view import paired_over_seeds

    d = [0.5, 1.1, 0.2]
    result = paired_over_seeds(d)
    mean = sum(d) / 3
    std = (sum((x - mean) ** 2 for x in d) / 2) ** 0.5
    assert result["mean"] == pytest.approx(mean) and result["std"] == pytest.approx(std)
    assert result["t"] == pytest.approx(mean / (std / 3 ** 0.5))
    assert paired_over_seeds([0.4])["p"] is None  # one seed: no test over seeds


def _model(folder, preset, tokenizer):
    import torch

    from tiekd.models import build_model

    with torch.device("meta"):
        model = build_model(preset, tokenizer)
    (folder / "model").mkdir(parents=True)
    model.config.save_pretrained(folder / "model")


def _row(tmp_path, tokenizer, name, size, seed, bleu, diffs, curve):
    folder = tmp_path / f"{name}-{size}-{seed}"
    _model(folder, size, tokenizer)
    (folder / "run").mkdir()
    records = [{"kind": "valid", "step": 100 * (i + 1), "bleu": b, "train_core_seconds": 360.0 * (i + 1)}
               for i, b in enumerate(curve)]
    (folder / "run" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return {"name": name, "method": {"No-KD": "none", "TIE-KD": "tie-kd"}[name], "size": size, "seed": seed,
            "folder": str(folder),
            "baseline": "No-KD" if name == "No-KD" else None,
            "scores": {"pooled": {"bleu": bleu, "chrf": 2 * bleu}}, "analysis": {"top1_agreement": 0.5},
            "significance": {key: {"diff": d, "p_value": 0.01} for key, d in diffs.items()}}


def test_the_table_by_size_orders_sizes_by_parameters_and_tests_over_seeds(tmp_path, prepared):
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.experiment import size_view

    tokenizer = load_tokenizer(prepared / "tokenizer")
    _model(tmp_path / "teacher", "tiny", tokenizer)
    flat = [10.0] * 12                               # converged: no gain late
    rising = [float(i) for i in range(12)]           # still learning: the last quarter gains
    rows = [_row(tmp_path, tokenizer, "No-KD", size, seed, 20.0 + seed, {}, flat)
            for size in ("micro", "nano") for seed in (1, 2, 3)]
    rows += [_row(tmp_path, tokenizer, "TIE-KD", "micro", seed, 21.0 + seed, {"vs_no_kd": d}, flat)
             for seed, d in ((1, 1.0), (2, 1.2), (3, 0.8))]
    rows += [_row(tmp_path, tokenizer, "TIE-KD", "nano", seed, 20.0, {"vs_no_kd": d}, rising)
             for seed, d in ((1, -0.1), (2, 0.3), (3, 0.1))]
    table = {"teacher": {"model": str(tmp_path / "teacher" / "model")}, "students": rows}
    lines = size_view.size_lines(table, "pooled")

    assert [(line["size"], line["name"]) for line in lines] == [
        ("micro", "No-KD"), ("micro", "TIE-KD"), ("nano", "No-KD"), ("nano", "TIE-KD")]
    micro = lines[1]
    assert micro["params"] > lines[2]["params"] and 0 < micro["share"] < 1
    against = micro["against"]["No-KD"]
    assert against["mean"] == pytest.approx(1.0) and against["p"] == pytest.approx(
        size_view.t_test_p(1.0 / (statistics.stdev([1.0, 1.2, 0.8]) / 3 ** 0.5), 2))
    assert micro["core_hours"] == [pytest.approx(1.2)] * 3  # the last validation's 4,320 CPU seconds
    assert micro["late_gain"] == [0.0] * 3
    assert lines[3]["late_gain"][0] == pytest.approx(11 - 1 - (8 - 1))  # mean(9,10,11) - mean(6,7,8)
    text = "\n".join(size_view.markdown(lines, ["No-KD"], "all 4 test sets pooled", "gain.png"))
    assert "| micro | " in text and "not converged (3 of 3)" in text.split("| nano |")[-1]
    assert "[s1 +1.00 (p=0.010), s2 +1.20 (p=0.010), s3 +0.80 (p=0.010)]" in text and "t-test n=3 p=" in text
    assert "s1 +0.00, s2 +0.00, s3 +0.00: converged" in text
    assert size_view.plot_gains(lines, "No-KD", tmp_path / "gain.png", "pooled").is_file()
    # against a later baseline, an earlier one would only mirror it: with nothing else, no plot
    mirrored = [{**line, "name": "No-KD", "against": {"Word-KD": line["against"]["No-KD"]}} for line in lines[1::2]]
    assert size_view.plot_gains(mirrored, "Word-KD", tmp_path / "w.png", "pooled", ["No-KD", "Word-KD"]) is None
    # where the teacher's logits came from: no config.yaml here, so unknown ("?") for TIE-KD, none for No-KD
    assert lines[1]["teacher_source"] == ["?"] * 3 and lines[0]["teacher_source"] == ["–"] * 3
    (Path(rows[6]["folder"]) / "run" / "config.yaml").write_text("teacher_cache: ''\n")
    (Path(rows[7]["folder"]) / "run" / "config.yaml").write_text("teacher_cache: /c\n")
    assert [size_view.teacher_source(Path(r["folder"]) / "run", "tie-kd") for r in rows[6:8]] == ["live", "cached"]
    assert "teacher logits" not in text  # nothing cached: no column
    rows[8]["teacher_source"] = "live to 1,538, then cached"  # a row that switched part-way shows the column
    switched = "\n".join(size_view.markdown(size_view.size_lines(table, "pooled"), ["No-KD"], "pooled", ""))
    assert "teacher logits" in switched and "live to 1,538, then cached" in switched
    # across sizes: micro +1.00 ± t(0.975, 2) * 0.2 / sqrt(3); nano +0.10; Welch between them
    found = size_view.trend(lines, "TIE-KD", "No-KD")
    micro_entry, nano_entry = found["sizes"]
    assert micro_entry["half_width"] == pytest.approx(4.3027 * 0.2 / 3 ** 0.5, rel=1e-3)
    # equal variances and sizes: Welch's dof is 2 (n - 1) = 4 exactly (computed as 3.9999999...)
    assert found["ends"]["difference"] == pytest.approx(0.9) and found["ends"]["dof"] == 4
    assert "- TIE-KD − No-KD: micro +1.00 [+0.50, +1.50] (n=3); nano +0.10" in text


def test_equal_differences_over_seeds_get_no_interval_and_no_test():
    from tiekd.experiment import size_view

    item = size_view.paired_over_seeds([2.0, 2.0, 2.0])
    assert item["p"] is None and item["no_spread"]
    assert "no spread over 3 seeds: no t-test" in size_view._against({**item, "per_seed": [(1, 2.0, 0.01)] * 3})
    line = {"name": "TIE-KD", "size": "tiny", "params": 1, "against": {"No-KD": {**item, "per_seed": [(1, 2.0, 0.01)] * 3}}}
    found = size_view.trend([line], "TIE-KD", "No-KD")
    assert found["sizes"][0]["half_width"] is None
    assert "no spread over the seeds: no interval" in size_view.trend_markdown(found)


def test_welch_and_the_t_quantile_match_tabulated_values():
    from tiekd.experiment.size_view import t_quantile, welch

    assert t_quantile(2) == pytest.approx(4.3027, rel=1e-4) and t_quantile(10) == pytest.approx(2.2281, rel=1e-4)
    found = welch([1.0, 2.0, 3.0], [1.0, 1.5, 2.0, 2.5])  # s^2 1 and 0.4167 over n 3 and 4
    a, b = 1 / 3, (5 / 12) / 4
    assert found["t"] == pytest.approx((2 - 1.75) / (a + b) ** 0.5)
    assert found["dof"] == int((a + b) ** 2 / (a * a / 2 + b * b / 3))
    assert welch([1.0], [2.0, 3.0]) is None
