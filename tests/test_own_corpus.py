"""`tiekd experiment` on a corpus of the user's own: the `data:` forms, the checks that run before any
stage, and the report on several named test sets (tiekd/data/source.py)."""

from __future__ import annotations

import csv
import json
import re

import pytest
import yaml

from conftest import head
from test_experiment import TINY


def own_corpus(root, multi30k):
    """English->German, laid out as a user's own: training pairs as one TSV, validation as two files,
    and two named test sets, one a TSV and one two files (real Multi30k text, other files and direction)."""
    root.mkdir(parents=True, exist_ok=True)

    def pairs(split, n, skip=0):
        return list(zip(head(multi30k / f"{split}.en", n, skip), head(multi30k / f"{split}.de", n, skip)))

    (root / "train.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs("train", 600)), encoding="utf-8")
    for name, split in (("dev", "val"), ("web", "test_2018_flickr")):
        for lang in ("en", "de"):
            (root / f"{name}.{lang}").write_text("\n".join(head(multi30k / f"{split}.{lang}", 40)) + "\n",
                                                 encoding="utf-8")
    (root / "news.tsv").write_text("".join(f"{en}\t{de}\n" for en, de in pairs("test_2017_flickr", 40)),
                                   encoding="utf-8")
    return {"train": str(root / "train.tsv"), "valid": [str(root / "dev.en"), str(root / "dev.de")],
            "tests": {"news": str(root / "news.tsv"), "web": [str(root / "web.en"), str(root / "web.de")]}}


def experiment(tmp_path, data, **changes):
    values = {**TINY, "src_lang": "en", "tgt_lang": "de", "data": data, **changes}
    values.pop("test_sets")  # the default: every test set the data names
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


def test_the_experiment_runs_end_to_end_on_own_files_with_two_named_test_sets(tmp_path, multi30k, capsys):
    from tiekd.cli import main

    config = experiment(tmp_path, own_corpus(tmp_path / "corpus", multi30k), train_pairs=500)
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(config), "--out", str(out)]) == 0
    capsys.readouterr()

    meta = json.loads((out / "data" / "meta.json").read_text())
    assert (meta["src_lang"], meta["tgt_lang"]) == ("en", "de")
    assert meta["splits"]["train"]["pairs"] == 500  # the head slice of the TSV
    assert {"news", "web"} <= set(meta["splits"])
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["name"] for r in rows] == ["No-KD", "Word-KD", "TIE-KD"]
    for test in ("news", "web", "pooled"):  # both test sets scored, and both together
        assert all(0 <= float(r[f"{test}:bleu:mean"]) <= 100 for r in rows), test
    assert rows[1]["vs_no_kd:p"] and rows[2]["vs_word_kd:p"]
    for row in json.loads((out / "results.json").read_text())["students"]:
        for test in ("news", "web"):
            assert len((out / "students" / f"{row['name'].lower()}-micro-seed1" / f"{test}.hyp")
                       .read_text().splitlines()) == TINY["test_max_sentences"]
    report = (out / "results.md").read_text()
    assert report.startswith("# tiny: corpus en→de")
    assert "BLEU difference on all 2 test sets pooled" in report
    assert "| BLEU news | chrF news | BLEU web | chrF web | BLEU pooled |" in report
    findings = [line for line in report.splitlines() if line.startswith("| TIE-KD beats")]
    assert len(findings) == 2 and not any(line.endswith("| not run |") for line in findings)

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("**/stage.json")}
    assert main(["experiment", "--config", str(config), "--out", str(out)]) == 0  # resumes: nothing redone
    assert {p: p.stat().st_mtime_ns for p in out.glob("**/stage.json")} == stamps


def _fault(tmp_path, multi30k, fault):
    data = own_corpus(tmp_path / "corpus", multi30k)
    changes = {}
    if fault == "missing test set":
        changes["test_sets"] = ["news", "nwes"]
    elif fault == "missing file":
        data["tests"]["web"][0] = str(tmp_path / "corpus" / "web.fr")
    elif fault == "misspelt key":
        data["tets"] = data.pop("tests")
    elif fault == "folder without the target language":
        folder = tmp_path / "shaped"
        folder.mkdir()
        for stem in ("train", "val", "test_mine"):
            (folder / f"{stem}.en").write_text("A line.\n", encoding="utf-8")
        data = {"folder": str(folder)}
    elif fault == "three-column TSV":
        train = tmp_path / "corpus" / "train.tsv"
        lines = train.read_text(encoding="utf-8").splitlines(keepends=True)
        lines[1] = lines[1].rstrip("\n") + "\tan extra column\n"
        train.write_text("".join(lines), encoding="utf-8")
    path = experiment(tmp_path, data)
    if changes:
        values = yaml.safe_load(path.read_text())
        values.update(changes)
        path.write_text(yaml.safe_dump(values, sort_keys=False))
    return path


@pytest.mark.parametrize("fault, expected", [
    ("missing test set", r":\d+: test_sets 'nwes': is not a test set of the data \(data\.tests has news, web\)\. "
                         r"Fix: name one of those"),
    ("missing file", r":\d+: data\.tests\.web: \S*web\.fr: no such file .*Fix: correct the path"),
    ("misspelt key", r":\d+: data: unknown key 'tets'\. Fix: did you mean 'tests'\?"),
    ("folder without the target language", r":\d+: data\.folder '\S*shaped': \S*train\.de: no such file "
                                           r"\(en-de train split of a Multi30k-shaped folder"),
    ("three-column TSV", r":\d+: data\.train: \S*train\.tsv:2: a TSV line needs exactly one tab \(source<TAB>"
                         r"target\), this one has 2\. Fix: write each pair as source, one tab, target"),
])
def test_a_fault_in_the_data_fails_before_any_stage_with_a_clear_message(tmp_path, multi30k, capsys, fault,
                                                                       expected):
    from tiekd.cli import main

    config = _fault(tmp_path, multi30k, fault)
    out = tmp_path / "exp"
    assert main(["experiment", "--config", str(config), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert f"invalid experiment {config}; nothing was run" in error
    assert re.search(re.escape(str(config)) + expected, error), error
    assert "Traceback" not in error and not out.exists()


def test_a_multi30k_shaped_folder_gives_every_test_pair_and_warns_about_what_it_leaves_out(tmp_path, multi30k,
                                                                                           capsys):
    from tiekd.data.prepare import prepare_data
    from tiekd.data.source import read_source

    folder = tmp_path / "shaped"
    folder.mkdir()
    for stem, split, n in (("train", "train", 300), ("valid", "val", 20), ("test_mine", "test_2016_flickr", 20),
                           ("test_other", "test_2017_flickr", 20)):
        for lang in ("de", "en"):
            (folder / f"{stem}.{lang}").write_text("\n".join(head(multi30k / f"{split}.{lang}", n)) + "\n",
                                                   encoding="utf-8")
    (folder / "test_half.de").write_text("Nur eine Seite.\n", encoding="utf-8")
    (folder / "train.de.gz").write_bytes(b"")
    (folder / "README.md").write_text("notes\n", encoding="utf-8")

    source = read_source({"folder": str(folder)}, None, "de", "en")
    assert source.test_names == ["test_mine", "test_other"] and source.names_its_tests
    assert source.splits["valid"] == (folder / "valid.de", folder / "valid.en")  # valid.* as well as val.*
    out = prepare_data(tmp_path / "prepared", multi30k_dir=folder, vocab_size=300, verbose=False)
    warnings = capsys.readouterr().err
    assert f"warning: {folder / 'test_half.en'}: missing, so test set test_half is left out" in warnings
    assert f"warning: {folder / 'train.de.gz'}: left out" in warnings
    assert "README" not in warnings
    assert {"test_mine", "test_other"} <= set(json.loads((out / "meta.json").read_text())["splits"])


def test_multi30k_keeps_its_prepare_fingerprint_and_default_test_set(tmp_path, multi30k):
    """Experiment folders made before `data:` existed keep resuming: the prepare stage hashes the same
    inputs, whichever way Multi30k is named."""
    from tiekd.experiment.pipeline import ExperimentConfig, Pipeline

    def inputs(values):
        config = ExperimentConfig.from_dict(values, source="test")
        out = tmp_path / f"exp{len(list(tmp_path.iterdir()))}"
        return config.test_sets, Pipeline(config, out).prepare_inputs()

    rows = {"students": [{"name": "No-KD", "method": "none"}], "teacher": {"max_updates": 10},
            "student": {"max_updates": 10}}
    assert inputs({**rows, "multi30k": str(multi30k)}) == (
        ["test_2016_flickr"], [str(multi30k), "de", "en", 8000, 0, ["test_2016_flickr"]])
    assert inputs({**rows, "data": {"multi30k": str(multi30k)}}) == inputs({**rows, "multi30k": str(multi30k)})


def test_a_prepared_folder_is_used_as_it_is(tmp_path, prepared, multi30k):
    from tiekd.data.prepare import prepare_data
    from tiekd.errors import TiekdError
    from tiekd.experiment.pipeline import ExperimentConfig, Pipeline

    rows = {"students": [{"name": "No-KD", "method": "none"}], "teacher": {"max_updates": 10},
            "student": {"max_updates": 10}}
    with pytest.raises(TiekdError, match=r"test_sets \[\]: must be a list of at least one test set\. Fix: name test "
                                         r"sets of the data: \(it has none: add tests\)"):
        ExperimentConfig.from_dict({**rows, "data": {"prepared": str(prepared)}}, source="test")
    with_tests = prepare_data(
        tmp_path / "with_tests", train=(prepared / "train.de", prepared / "train.en"),
        valid=(prepared / "valid.de", prepared / "valid.en"),
        tests={"mine": (multi30k / "test_2016_flickr.de", multi30k / "test_2016_flickr.en")},
        tokenizer=prepared / "tokenizer", verbose=False)
    config = ExperimentConfig.from_dict({**rows, "data": {"prepared": str(with_tests)}}, source="test")
    assert config.test_sets == ["mine"]
    pipeline = Pipeline(config, tmp_path / "exp")
    assert pipeline.data_dir(pipeline.source()) == with_tests  # no copy, no second preparation
    with pytest.raises(TiekdError, match=r"data\.prepared .*holds de->en data, the experiment is en->de"):
        ExperimentConfig.from_dict({**rows, "data": {"prepared": str(with_tests)}, "src_lang": "en",
                                    "tgt_lang": "de"}, source="test")


@pytest.fixture(scope="module")
def hf_corpus(tmp_path_factory, multi30k):
    """A local Hugging Face dataset of the WMT schema ({"translation": {"de": ..., "en": ...}}), saved to disk."""
    datasets = pytest.importorskip("datasets")
    splits = {}
    for name, source, n in (("train", "train", 300), ("validation", "val", 20), ("test", "test_2016_flickr", 15),
                            ("test2", "test_2017_flickr", 10)):
        pairs = zip(head(multi30k / f"{source}.de", n), head(multi30k / f"{source}.en", n))
        splits[name] = datasets.Dataset.from_dict({"translation": [{"de": de, "en": en} for de, en in pairs]})
    folder = tmp_path_factory.mktemp("hf") / "wmt-like"
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return folder


def test_a_hugging_face_dataset_is_named_checked_and_prepared(tmp_path, hf_corpus, monkeypatch):
    from tiekd.errors import TiekdError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a name that is not a local folder must not reach the hub
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from tiekd.experiment.pipeline import ExperimentConfig, Pipeline

    rows = {"students": [{"name": "No-KD", "method": "none"}], "teacher": {"max_updates": 10},
            "student": {"max_updates": 10}, "vocab_size": 300}
    config = ExperimentConfig.from_dict({**rows, "data": {"hf_dataset": str(hf_corpus)}}, source="test")
    assert config.test_sets == ["test", "test2"]  # every split but train and validation
    pipeline = Pipeline(config, tmp_path / "exp")
    data = pipeline.prepare(pipeline.source())
    meta = json.loads((data / "meta.json").read_text())
    assert {name: split["pairs"] for name, split in meta["splits"].items()} == {
        "train": 300, "valid": 20, "test": 15, "test2": 10}
    assert (data / "test2.en").read_text(encoding="utf-8").splitlines()[0] == head_line(hf_corpus)

    named = {"hf_dataset": str(hf_corpus), "tests": {"newstest": "test"}}
    assert ExperimentConfig.from_dict({**rows, "data": named}, source="test").test_sets == ["newstest"]
    with pytest.raises(TiekdError, match=r"data\.tests\.newstest 'tset': is not a split of .*wmt-like \(it has "
                                         r"train, validation, test, test2\)"):
        ExperimentConfig.from_dict({**rows, "data": {**named, "tests": {"newstest": "tset"}}}, source="test")
    with pytest.raises(TiekdError, match=r"data\.train 'train': its rows are not \{'translation': \{'fr': \.\.\., "
                                         r"'en': \.\.\.\}\}"):
        ExperimentConfig.from_dict({**rows, "data": named, "src_lang": "fr"}, source="test")
    with pytest.raises(TiekdError, match=r"data\.hf_dataset '\S*nowhere': no such folder"):
        ExperimentConfig.from_dict({**rows, "data": {"hf_dataset": str(tmp_path / "nowhere")}}, source="test")


def head_line(hf_corpus):
    import datasets

    return datasets.load_from_disk(str(hf_corpus))["test2"][0]["translation"]["en"]


SACREBLEU_LOOKUP = """
import json, sys, urllib.error, urllib.request


def offline(*args, **kwargs):  # the test never touches the network: a download fails as offline
    raise urllib.error.URLError("offline (test)")


urllib.request.urlopen = offline
from tiekd.data.source import DataProblem, read_source

try:
    source = read_source(json.loads(sys.argv[1]), None, "de", "en")
    print("FILES", *source.splits["newstest"])
except DataProblem as problem:
    print("PROBLEM", problem)
"""


@pytest.mark.parametrize("name, found", [("wmt14", "files"), ("wmt13", "not cached"), ("newstest2099", "unknown")])
def test_a_test_set_named_by_sacrebleu_is_read_from_its_cache(tmp_path, multi30k, name, found):
    """`tests: {newstest: {sacrebleu: wmt14}}` gives sacreBLEU's own cached source and reference files of the
    language pair; a set missing from the cache (offline) or a name sacreBLEU does not know is a clear
    problem with the fix."""
    import os
    import subprocess
    import sys

    cache = tmp_path / "sacrebleu"
    (cache / "wmt14").mkdir(parents=True)
    for field in ("src", "ref", "docid", "genre", "origlang"):  # what sacreBLEU writes for wmt14 de-en
        (cache / "wmt14" / f"wmt14.de-en.{field}").write_text("Ein Satz.\n" if field == "src" else "A sentence.\n")
    data = {"train": [str(multi30k / "val.de"), str(multi30k / "val.en")],
            "valid": [str(multi30k / "val.de"), str(multi30k / "val.en")], "tests": {"newstest": {"sacrebleu": name}}}
    env = {**os.environ, "SACREBLEU": str(cache)}
    done = subprocess.run([sys.executable, "-c", SACREBLEU_LOOKUP, json.dumps(data)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    if found == "files":
        assert done.stdout.split() == ["FILES", str(cache / "wmt14" / "wmt14.de-en.src"),
                                       str(cache / "wmt14" / "wmt14.de-en.ref")]
    elif found == "not cached":
        assert done.stdout.startswith("PROBLEM") and "not in its cache" in done.stdout, done.stdout
        assert "URLError" in done.stdout and "sacrebleu -t wmt13 -l de-en --echo src" in done.stdout
    else:
        assert done.stdout.startswith("PROBLEM") and "sacreBLEU has no test set 'newstest2099'" in done.stdout
        assert "sacrebleu --list" in done.stdout
