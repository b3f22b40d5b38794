"""tiekd.training.malloc_tuning: freed blocks stay in the process (a reused block is not faulted in again), the
tiekd command applies it to training commands only, and any allocator setting of the user's own is left alone."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tiekd.training import malloc_tuning

BLOCK_FLOATS = 16 * 2 ** 20  # 64 MB: above glibc's largest mmap threshold (32 MiB)
PAGES = BLOCK_FLOATS * 4 // 4096

# allocate, touch and free a 64 MB block six times, as a training step does with its logits, and count
# the minor page faults of the last three times: by then a kept block is reused. (Not from the second
# time on: the first freed block can be one alignment pad too small for the next, so one more is made.)
FAULTS_OF_REUSED_BLOCKS = f"""
import contextlib, io, resource, sys
import torch
if sys.argv[1] != "bare":  # a tiekd command that stops at once (no such files): was malloc tuned first?
    from tiekd import cli
    with contextlib.redirect_stderr(io.StringIO()):
        assert cli.main(sys.argv[1:]) == 2
faults = []
for time in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty({BLOCK_FLOATS}).fill_(float(time))
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del block
print(sum(faults[3:]))
"""


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("GLIBC_TUNABLES", "LD_PRELOAD", malloc_tuning.OPT_OUT)}
    return {**env, **extra}


def _faults(command: list[str], **env) -> int:
    done = subprocess.run([sys.executable, "-c", FAULTS_OF_REUSED_BLOCKS, *command], env=_clean_env(**env),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(malloc_tuning._glibc() is None, reason="glibc's mallopt is Linux/glibc only")
def test_a_training_command_keeps_freed_blocks_for_reuse(tmp_path):
    untuned = _faults(["bare"])
    if untuned < PAGES:  # 3 blocks of PAGES pages each are faulted in without the tuning
        pytest.skip(f"this machine's default malloc already reuses the blocks ({untuned} faults; huge pages?)")
    train = ["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "run")]
    tuned = _faults(train)
    opted_out = _faults(train, TIEKD_MALLOC_TUNING="0")
    not_training = _faults(["translate", "--model", str(tmp_path / "no-model"), "-i", str(tmp_path / "no.de")])
    assert tuned < PAGES // 20, (tuned, untuned)
    assert opted_out > PAGES, (opted_out, untuned)
    assert not_training > PAGES, (not_training, untuned)


def _clear_allocator_settings(monkeypatch) -> None:
    for name in [n for n in os.environ if n.startswith("MALLOC_")] + ["GLIBC_TUNABLES", "LD_PRELOAD",
                                                                        malloc_tuning.OPT_OUT]:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable, value, reason", [
    ("TIEKD_MALLOC_TUNING", "0", "TIEKD_MALLOC_TUNING=0"),
    ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2", "GLIBC_TUNABLES or MALLOC_"),
    ("MALLOC_ARENA_MAX", "2", "GLIBC_TUNABLES or MALLOC_"),
    ("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4", "another allocator is preloaded"),
])
def test_a_users_own_allocator_setting_is_left_alone(monkeypatch, variable, value, reason):
    _clear_allocator_settings(monkeypatch)
    monkeypatch.setenv(variable, value)
    assert reason in malloc_tuning.skip_reason()
    assert malloc_tuning.keep_freed_memory() is False
    assert malloc_tuning.tune_for_command("train") is False


@pytest.mark.skipif(malloc_tuning._glibc() is None, reason="glibc's mallopt is Linux/glibc only")
def test_it_applies_where_nothing_else_is_set(monkeypatch):
    _clear_allocator_settings(monkeypatch)
    assert malloc_tuning.skip_reason() is None
    assert malloc_tuning.keep_freed_memory() is True  # glibc took all three settings
    assert malloc_tuning.tune_for_command("translate") is False
