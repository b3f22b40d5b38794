"""The run configuration: flags generated from RunConfig's fields, and every value checked in one place."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys

import pytest

from tiekd.config import RunConfig, field_types
from tiekd.config_fields import InvalidConfig
from tiekd.errors import TiekdError

FIELDS = dataclasses.fields(RunConfig)
DISTILL_ONLY = {f.name for f in FIELDS if f.metadata["distill_only"]}


def help_text(command: str, capsys, monkeypatch) -> str:
    """`tiekd COMMAND --help`, one line per option (no wrapping)."""
    from tiekd.cli import main

    monkeypatch.setenv("COLUMNS", "2000")
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def test_negative_lr_is_a_clear_error_without_traceback_or_run_folder(prepared, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "tiekd", "train", "--data", str(prepared), "--out", str(out),
                             "--max-updates", "2", "--lr", "-1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--lr -1.0: must be > 0. Fix:" in result.stderr
    assert not out.exists()


def test_help_documents_every_field_from_its_metadata(capsys, monkeypatch):
    text = help_text("distill", capsys, monkeypatch)
    entries = {}  # first option string -> its whole entry (argparse puts the help of long options on the next line)
    for line in text.split("options:")[1].splitlines():
        if line.strip().startswith("-"):
            name = re.match(r"\s*(-[\w-]+)", line).group(1)
            entries[name] = line
        elif line.strip():
            entries[name] += " " + line.strip()
    for field in FIELDS:
        assert field.metadata["help"], field.name
        entry = entries[flag(field.name)]
        assert field.metadata["help"] in entry, field.name
        assert ("default: " in entry) == (field.default != ""), field.name
    assert "--lr LR" in text and "(> 0; default: 0.0007)" in text


def test_train_has_every_flag_but_the_distill_only_ones(capsys, monkeypatch):
    def flags(command):
        return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text(command, capsys, monkeypatch)))

    train, distill = flags("train"), flags("distill")
    common = {"--help", "--config", "--resume", "--overwrite"}
    booleans = {flag(f.name).replace("--", "--no-", 1) for f in FIELDS if field_types()[f.name] is bool}
    assert distill == {flag(f.name) for f in FIELDS} | booleans | common | {"--allow-no-kd"}
    distill_flags = {flag(n) for n in DISTILL_ONLY} | {flag(n).replace("--", "--no-", 1) for n in DISTILL_ONLY}
    assert train == distill - distill_flags - {"--allow-no-kd"}
    # the distill-only fields are exactly the KD settings
    assert DISTILL_ONLY == {"method", "teacher", "teacher_cache", "init_from_teacher", "kd_alpha", "topk", "iterative_passes",
                            "iterative_start_update", "ranking", "selective_ratio", "kd_temperature", "jsd_beta",
                            "skew_alpha", "on_policy_lambda", "on_policy_divergence", "on_policy_sampling",
                            "seq_kd_targets", "seq_kd_beam", "seq_kd_engine", "seq_kd_nbest", "seq_kd_select"}
    assert {"--no-ranking", "--ranking", "--no-valid-bleu", "--valid-bleu", "--adam-betas"} <= distill


def test_help_and_a_mistyped_flag_answer_without_importing_torch_or_transformers():
    """Those two imports take 5-10 s on a 2-core machine; a user asking for --help should not wait."""
    script = """
import contextlib, io, sys
from tiekd.cli import build_parser, main
commands = [None, *build_parser()._subparsers._group_actions[0].choices]
for command in commands:
    for flags in (["--help"], ["--no-such-flag"]):
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                main(([command] if command else []) + flags)
            except SystemExit:
                pass
print(len(commands), sorted(m for m in ("torch", "transformers") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["12", "[]"]


def test_flags_override_the_config_file_and_keep_their_types(tmp_path):
    from tiekd.cli import _run_config_from_args, build_parser

    config = tmp_path / "run.yaml"
    config.write_text("data: d\nout: o\nlr: 0.001\nranking: false\nmax_updates: 9\nmethod: tie-kd\nteacher: t\n")
    parse = build_parser().parse_args
    from_file = _run_config_from_args(parse(["distill", "--config", str(config)]))
    assert (from_file.lr, from_file.ranking, from_file.max_updates, from_file.valid_bleu) == (0.001, False, 9, True)
    flags = ["--ranking", "--no-valid-bleu", "--max-updates", "5", "--adam-betas", "0.8", "0.9", "--dropout", "0.2"]
    overridden = _run_config_from_args(parse(["distill", "--config", str(config), *flags]))
    assert (overridden.lr, overridden.ranking, overridden.valid_bleu, overridden.max_updates) == (0.001, True, False, 5)
    assert overridden.adam_betas == (0.8, 0.9) and overridden.dropout == 0.2


def test_a_config_file_typo_names_the_file_the_line_and_the_closest_key(tmp_path, capsys):
    from tiekd.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("data: d\nout: o\nkeep_lsat: 3\nmax_updates: 5\n")
    assert main(["train", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert f"{config}:3: unknown key 'keep_lsat'. Fix: did you mean 'keep_last'?" in error
    assert "Traceback" not in error

    config.write_text("data: d\nout: o\nmax_updates: 5\nlr: 7e-4\nlr_schedule: cosin\n")
    assert main(["train", "--config", str(config), "--warmup-updates", "-3"]) == 2
    error = capsys.readouterr().err
    assert "(3 problems)" in error
    assert f"{config}:4: lr '7e-4': must be a number, not str (YAML reads 7e-4 as text: write 0.0007)" in error
    assert f"{config}:5: lr_schedule 'cosin': must be one of inverse-sqrt, linear, cosine. Fix: use 'cosine'" in error
    assert "--warmup-updates -3: must be >= 0" in error  # a flag is named as a flag


BASE = dict(data="d", out="o", method="word-kd", teacher="t", max_updates=10)
# field, a value outside its range, a value at the edge of it
RANGES = [
    ("lr", 0.0, 1e-9), ("warmup_updates", -1, 0), ("warmup_init_lr", -1e-9, 0.0), ("max_tokens", 0, 1),
    ("update_freq", 0, 1), ("dropout", 1.0, 0.0), ("attention_dropout", -0.1, 0.0), ("kd_alpha", 1.01, 1.0),
    ("topk", 0, 1), ("iterative_passes", 0, 1), ("iterative_start_update", -1, 0), ("label_smoothing", 1.0, 0.0),
    ("jsd_beta", 1.0, 0.99), ("skew_alpha", 1.0, 0.0), ("on_policy_lambda", -0.1, 1.0), ("kd_temperature", 0.0, 0.5),
    ("clip_norm", -1.0, 0.0), ("keep_last", -1, 0), ("selective_ratio", 0.0, 1.0),
    ("adam_betas", (0.9, 1.0), (0.0, 0.99)),
    ("adam_eps", -1e-8, 0.0), ("weight_decay", -0.1, 0.0), ("seed", -1, 0), ("valid_every", 0, 1), ("log_every", 0, 1),
    ("valid_beam", 0, 1), ("seq_kd_beam", 0, 1), ("max_epochs", -1, 0), ("min_lr", -1e-9, 0.0),
    ("method", "tiekd", "tie-kd"), ("lr_schedule", "cosin", "cosine"), ("precision", "fp16", "bf16"),
    ("device", "gpu", "cuda:1"), ("on_nonfinite", "warn", "skip"), ("on_policy_divergence", "kl", "tvd"),
    ("on_policy_sampling", "beam", "greedy"),
]


@pytest.mark.parametrize("name, bad, edge", RANGES, ids=[r[0] for r in RANGES])
def test_each_range_and_choice_is_checked(name, bad, edge):
    RunConfig(**{**BASE, name: edge})
    with pytest.raises(InvalidConfig) as caught:
        RunConfig(**{**BASE, name: bad})
    assert [p.key for p in caught.value.problems] == [name]
    assert str(caught.value).startswith(f"invalid run configuration: {name} {bad!r}: ") and "Fix: " in str(caught.value)


def test_every_problem_is_reported_at_once_with_types_and_relations():
    with pytest.raises(TiekdError) as caught:
        RunConfig(data="d", out="o", lr=-1, dropout=1.5, max_tokens=True, valid_bleu="yes", min_lr=0.1,
                  method="tie-kd", kd_temperature=2.0)
    keys = [p.key for p in caught.value.problems]
    # min_lr is not compared with a wrong lr; the missing teacher and the temperature are relations
    assert keys == ["dropout", "max_tokens", "lr", "valid_bleu", "teacher", "kd_temperature"]
    assert "max_tokens True: must be a whole number, not bool" in str(caught.value)
    with pytest.raises(TiekdError, match=r"min_lr 0\.1: must be below lr \(0\.01\)"):
        RunConfig(lr=0.01, min_lr=0.1)
    with pytest.raises(TiekdError, match="lr_schedule 'linear': decays to min_lr .* needs max_updates or max_epochs"):
        RunConfig(lr_schedule="linear")
