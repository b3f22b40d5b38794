"""The method registry: every method is one object, and a new one needs nothing but `register`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import small_config
from tiekd.errors import TiekdError
from tiekd.kd.methods import METHODS, Method, get_method, register


def test_the_readme_documents_every_registered_method():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z0-9-]+)`", readme))
    assert set(METHODS) <= documented, set(METHODS) - documented


def test_each_method_says_what_it_needs():
    assert not get_method("none").needs_teacher
    assert get_method("seq-kd").teacher_targets and not get_method("seq-kd").online_teacher
    assert [name for name, m in METHODS.items() if m.kd_loss is None] == ["none", "seq-kd"]
    assert [name for name, m in METHODS.items() if m.on_policy] == ["on-policy"]
    assert [name for name, m in METHODS.items() if m.token_mask is not None] == ["selective-kd"]
    assert all(m.summary for m in METHODS.values())
    with pytest.raises(TiekdError, match="unknown method 'tie_kd'. Fix: use one of none, word-kd"):
        get_method("tie_kd")
    with pytest.raises(ValueError, match="registered already"):
        register(Method("word-kd", "again"))


def test_a_new_method_needs_only_register(prepared, teacher_dir, tmp_path):
    """A mean-squared error between the two distributions, registered here, is a valid --method for the
    configuration and the CLI, and the trainer computes it as the KD term of every update."""
    from tiekd.cli import build_parser
    from tiekd.config import RunConfig
    from tiekd.training.trainer import Trainer

    calls = []

    def mse_loss(student_logits, teacher_logits, target, pad_id):
        keep = (target != pad_id).unsqueeze(-1)
        gap = (student_logits.softmax(-1) - teacher_logits.softmax(-1)) * keep
        calls.append(tuple(student_logits.shape))
        return gap.pow(2).sum()

    register(Method("test-mse", "squared error between the distributions", kd_loss=lambda config: mse_loss))
    try:
        args = build_parser().parse_args(["distill", "--method", "test-mse", "--teacher", str(teacher_dir),
                                          "--data", str(prepared), "--out", str(tmp_path / "cli")])
        assert args.method == "test-mse"
        trainer = Trainer(small_config(prepared, tmp_path / "run", method="test-mse", teacher=str(teacher_dir),
                                       max_updates=2, valid_bleu=False, valid_every=100), quiet=True)
        assert trainer.objective.kd_loss is mse_loss and trainer.teacher is not None
        trainer.fit()
        assert len(calls) == 2 and all(len(shape) == 3 for shape in calls)  # one KD term per update
        assert trainer.state.step == 2
    finally:
        del METHODS["test-mse"]
    with pytest.raises(TiekdError, match="method 'test-mse': must be one of"):
        RunConfig(method="test-mse")
