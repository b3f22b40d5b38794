"""The distilled-data builder: CTranslate2 n-best decoding, chrF selection, resumable shards, checks."""

from __future__ import annotations

import json
import shutil

import pytest
from sacrebleu.metrics import CHRF

from conftest import head
from tiekd.inference.distilled_data import DistillationOptions, build_distilled_data, choose_hypothesis
from tiekd.errors import TiekdError
from tiekd.io import read_lines

# the session's teacher is barely trained and often runs away (repeats a letter to the length limit):
# a short limit keeps these tests fast
LIMIT = 24


@pytest.fixture(scope="module")
def texts(tmp_path_factory, multi30k):
    root = tmp_path_factory.mktemp("distilled")
    # sentences the teacher did not train on, with their references
    (root / "src.de").write_text("\n".join(head(multi30k / "val.de", 40)) + "\n", encoding="utf-8")
    (root / "ref.en").write_text("\n".join(head(multi30k / "val.en", 40)) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def one_best_and_chrf(teacher_dir, texts, tmp_path_factory):
    """The same teacher's targets twice: its 1-best, and the chrF-best of its 4-best."""
    out = tmp_path_factory.mktemp("builds")
    best = build_distilled_data(teacher_dir, texts / "src.de", out / "best.en", texts / "ref.en",
                                options=DistillationOptions(beam=4, nbest=1, shard_size=16, max_length=LIMIT), quiet=True)
    chrf = build_distilled_data(teacher_dir, texts / "src.de", out / "chrf.en", texts / "ref.en",
                                options=DistillationOptions(beam=4, nbest=4, select="chrf", shard_size=16, max_length=LIMIT), quiet=True)
    return out, best, chrf


def test_chrf_selection_never_scores_below_the_1best(one_best_and_chrf, texts):
    out, best, chrf = one_best_and_chrf
    refs = read_lines(texts / "ref.en")
    one_best, chosen = read_lines(out / "best.en"), read_lines(out / "chrf.en")
    assert len(one_best) == len(chosen) == len(refs) == best["sentences"] == 40
    metric = CHRF()
    for a, b, ref in zip(one_best, chosen, refs):
        assert metric.sentence_score(b, [ref]).score >= metric.sentence_score(a, [ref]).score - 1e-9
    differing = sum(a != b for a, b in zip(one_best, chosen))
    assert differing <= chrf["not_1best"]  # two n-best entries may spell the same text
    assert differing > 0  # a barely trained teacher's 4-best holds better matches for some sentences
    assert metric.corpus_score(chosen, [refs]).score > metric.corpus_score(one_best, [refs]).score
    report = json.loads((out / "chrf.en.json").read_text())
    assert report["nbest"] == 4 and report["select"] == "chrf" and report["sentences_per_s"] > 0


def test_choose_hypothesis_keeps_the_better_ranked_entry_on_a_tie():
    entries = [("a dog runs", 3, False), ("a dog runs", 3, False), ("the cat sleeps", 3, False)]
    assert choose_hypothesis(entries, "the cat sleeps", "chrf") == 2
    assert choose_hypothesis(entries, "a dog runs", "chrf") == 0
    assert choose_hypothesis(entries, "the cat sleeps", "best") == 0
    assert choose_hypothesis(entries, None, "chrf") == 0  # no reference (monolingual text): the 1-best


def test_an_interrupted_build_translates_only_the_missing_or_torn_shards(one_best_and_chrf, teacher_dir, texts):
    out, _, _ = one_best_and_chrf
    work = out / ".best.en.work" / "shards"
    expected = (out / "best.en").read_text()
    # shard 1 never finished; shard 2 was torn (a line short) though its record says complete
    for suffix in ("txt", "json"):
        (work / f"000001.{suffix}").unlink()
    lines = (work / "000002.txt").read_text().splitlines(keepends=True)
    (work / "000002.txt").write_text("".join(lines[:-1]))
    (out / "best.en").unlink()
    report = build_distilled_data(teacher_dir, texts / "src.de", out / "best.en", texts / "ref.en",
                                  options=DistillationOptions(beam=4, nbest=1, shard_size=16, max_length=LIMIT), quiet=True)
    assert report["translated_now"] == 16 + 8  # shard 1 (16 lines) and the last shard (8 lines)
    assert (out / "best.en").read_text() == expected


def test_monolingual_source_text_gets_the_1best(teacher_dir, texts, tmp_path):
    report = build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "mono.en", None,
                                  options=DistillationOptions(beam=2, nbest=2, shard_size=64, max_length=LIMIT), quiet=True)
    assert report["references"] is None and report["not_1best"] == 0
    assert len(read_lines(tmp_path / "mono.en")) == 40


def test_greedy_targets_agree_between_ctranslate2_and_pytorch(teacher_dir, texts, tmp_path):
    ct2 = build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "ct2.en",
                               options=DistillationOptions(beam=1, max_length=LIMIT), quiet=True)
    torch_engine = build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "pt.en",
                                        options=DistillationOptions(engine="pytorch", beam=1, max_length=LIMIT),
                                        quiet=True)
    assert ct2["sentences"] == torch_engine["sentences"] == 40
    assert ct2["runaway"] == torch_engine["runaway"]
    a, b = read_lines(tmp_path / "ct2.en"), read_lines(tmp_path / "pt.en")
    # greedy search takes the argmax, which the two engines agree on (tests/test_export.py). At the length
    # limit `generate` spends the last token on a forced </s> where CTranslate2 emits one more token,
    # so there the PyTorch target is a prefix of the CTranslate2 one
    assert all(x == y or x.startswith(y) for x, y in zip(a, b)), [(x, y) for x, y in zip(a, b) if x != y][:3]
    assert sum(x == y for x, y in zip(a, b)) >= 40 - ct2["runaway"]


def test_ranks_share_the_shards_and_rank_0_merges_them(one_best_and_chrf, teacher_dir, texts, tmp_path, monkeypatch):
    """Under torchrun rank r translates shards r, r + W, ...; played here by two threads whose barriers
    meet (torch.distributed's need a process group). The merged file equals the one-process build, and
    the pytorch engine decodes with a teacher the caller already loaded."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from tiekd.models import load_model
    import tiekd.training.distributed
    from tiekd.training.distributed import DistInfo

    import tiekd.inference.export
    import tiekd.models

    out, _, _ = one_best_and_chrf
    meeting = threading.Barrier(2, timeout=300)
    # tiekd.inference.distilled_data imports these when it runs them, so patching the module that holds them is enough
    monkeypatch.setattr(tiekd.training.distributed, "wait_for_all", lambda dist: dist.enabled and meeting.wait())
    monkeypatch.setattr(tiekd.training.distributed, "open_long_waits", lambda dist: None)
    exports = []
    real_export = tiekd.inference.export.export_ctranslate2
    monkeypatch.setattr(tiekd.inference.export, "export_ctranslate2",
                        lambda *a, **k: exports.append(a) or real_export(*a, **k))
    options = DistillationOptions(beam=4, nbest=1, shard_size=16, max_length=LIMIT)

    def rank(r: int, work=tmp_path / "work") -> dict:
        return build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "best.en", texts / "ref.en",
                                    work_dir=work, options=options, quiet=True, dist=DistInfo(r, 2))

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(rank, [0, 1]))
    assert reports[0] == reports[1] and reports[0]["sentences"] == 40
    assert reports[0]["translated_now"] == 16 + 8  # rank 0's shards 0 and 2; rank 1 took shard 1
    assert (tmp_path / "best.en").read_text() == (out / "best.en").read_text()
    assert len(exports) == 1  # rank 0 exported the teacher; rank 1 waited for it

    # an error on rank 0 alone (here: a work folder built with other settings) stops both ranks with it
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "settings.json").write_text(json.dumps({"beam": 2}), encoding="utf-8")
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(rank, r, stale) for r in (0, 1)]
        for future in futures:
            with pytest.raises(TiekdError, match="other settings"):
                future.result()

    loaded = load_model(str(teacher_dir))
    greedy = DistillationOptions(engine="pytorch", beam=1, max_length=LIMIT)
    from_folder = build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "pt2.en", options=greedy,
                                       quiet=True)
    with monkeypatch.context() as patch:  # the loaded teacher is used: nothing is loaded from the folder
        patch.setattr(tiekd.models, "load_model", lambda *a, **k: pytest.fail("loaded the teacher again"))
        mine = build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "pt.en", options=greedy, quiet=True,
                                    model=loaded)
    assert mine["sentences"] == from_folder["sentences"] == 40
    assert read_lines(tmp_path / "pt.en") == read_lines(tmp_path / "pt2.en")


def test_bad_input_is_refused_with_the_fix(teacher_dir, texts, tmp_path):
    with pytest.raises(TiekdError, match="needs --references"):
        build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "a.en",
                             options=DistillationOptions(nbest=4, select="chrf"), quiet=True)
    (tmp_path / "short.en").write_text("one line\n")
    with pytest.raises(TiekdError, match=r"short\.en: 1 lines, but .*src\.de has 40"):
        build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "a.en", tmp_path / "short.en", quiet=True)
    with pytest.raises(TiekdError, match="nbest >= 2"):
        DistillationOptions(select="chrf", nbest=1).validate()
    with pytest.raises(TiekdError, match="neither a model folder"):
        build_distilled_data(tmp_path, texts / "src.de", tmp_path / "b.en", quiet=True)
    # a work folder belongs to one build: other settings are refused, not mixed in
    build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "c.en",
                         options=DistillationOptions(beam=1, shard_size=64, max_length=LIMIT), quiet=True)
    again = build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "c.en", quiet=True,
                                 options=DistillationOptions(beam=1, shard_size=64, max_length=LIMIT, threads=1))
    assert again["translated_now"] == 0 and again["threads"] == 1  # threads change the speed, not the targets
    with pytest.raises(TiekdError, match=r"other settings \(beam\)"):
        build_distilled_data(teacher_dir, texts / "src.de", tmp_path / "c.en",
                             options=DistillationOptions(beam=2, shard_size=64, max_length=LIMIT), quiet=True)
    shutil.rmtree(tmp_path / ".c.en.work")


def test_the_command_line_builds_targets_and_says_what_it_wrote(teacher_dir, texts, tmp_path, capsys):
    from tiekd.cli import main

    code = main(["distill-data", "--teacher", str(teacher_dir), "--source", str(texts / "src.de"),
                 "--references", str(texts / "ref.en"), "--out", str(tmp_path / "t.en"), "--beam", "2",
                 "--nbest", "2", "--select", "chrf", "--max-length", str(LIMIT), "--shard-size", "25"])
    assert code == 0
    out = capsys.readouterr().out
    assert f"wrote {tmp_path / 't.en'}: 40 targets" in out and "sentences/s" in out
    assert len(read_lines(tmp_path / "t.en")) == 40
    assert main(["distill-data", "--teacher", str(teacher_dir), "--source", str(texts / "src.de"),
                 "--out", str(tmp_path / "u.en"), "--select", "chrf", "--nbest", "2"]) == 2
    assert "needs --references" in capsys.readouterr().err
