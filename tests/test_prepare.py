"""`tiekd prepare` on real Multi30k slices: outputs, counts, every input error, atomic writes, download."""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from tiekd.data import load_prepared, prepare_data
from tiekd.data import multi30k
from tiekd.data.prepare import add_prepare_arguments, run_prepare
from tiekd.data.tokenizer import TOKENIZER_FILES
from tiekd.errors import TiekdError

# the repository sits at .../main and the shared data at .../shared, in CI as here
MULTI30K = Path(os.environ.get("TIEKD_MULTI30K_DIR") or Path(__file__).resolve().parents[2] / "shared/data/multi30k")
VOCAB = 500  # small, so SentencePiece trains in well under a second


def head(name: str, n: int) -> list[str]:
    path = MULTI30K / name
    if not path.is_file():
        pytest.fail(f"Multi30k not found at {MULTI30K}: put shared/ beside the repository or set TIEKD_MULTI30K_DIR")
    with path.open(encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(n)]


def write(path: Path, lines: list[str], newline: str = "\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + newline for line in lines).encode("utf-8"))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    """2,000 training pairs, 200 validation and 100 test pairs from Multi30k, as user files."""
    data = tmp_path / "in"
    files = {}
    for split, stem, n in (("train", "train", 2000), ("valid", "val", 200), ("test", "test_2016_flickr", 100)):
        files[split] = tuple(write(data / f"{split}.{lang}", head(f"{stem}.{lang}", n)) for lang in ("de", "en"))
    return files


def prepare(out, corpus, **kwargs):
    kwargs.setdefault("train", corpus["train"])
    kwargs.setdefault("valid", corpus["valid"])
    return prepare_data(out, vocab_size=VOCAB, **kwargs)


def test_prepare_writes_tokenizer_clean_text_and_meta(tmp_path, capsys):
    de, en = head("train.de", 2000), head("train.en", 2000)
    de[9] = ""  # line 10: empty source -> skipped
    en[19] = "   "  # line 20: whitespace-only target -> skipped
    de[29] = "Hund " * 4000  # line 30: 20,000 characters -> filtered before tokenization
    de[39] = "Hund " * 300  # line 40: far over 250 pieces -> filtered
    de[49], en[49] = "Hund", "A man in a blue shirt is standing on a ladder cleaning windows . " * 3  # ratio > 9
    train = (write(tmp_path / "in/train.de", de), write(tmp_path / "in/train.en", en))
    valid_de, valid_en = head("val.de", 200), head("val.en", 200)
    valid_en[4] = ""  # skipped, counted
    valid_de[6] = "Hund " * 4000  # valid/test are never filtered
    valid = (write(tmp_path / "in/valid.de", valid_de), write(tmp_path / "in/valid.en", valid_en))
    test = tuple(write(tmp_path / f"in/t.{lang}", head(f"test_2016_flickr.{lang}", 100)) for lang in ("de", "en"))

    out = prepare_data(tmp_path / "runs/data", train=train, valid=valid, tests={"flickr16": test}, vocab_size=VOCAB)

    assert out == tmp_path / "runs/data"
    assert all((out / "tokenizer" / name).is_file() for name in TOKENIZER_FILES)
    meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    assert (meta["src_lang"], meta["tgt_lang"], meta["vocab_size"]) == ("de", "en", VOCAB)
    assert meta["inputs"]["splits"]["train"]["source"]["sha256"] == hashlib.sha256(train[0].read_bytes()).hexdigest()
    splits = meta["splits"]
    assert list(splits) == ["train", "valid", "flickr16"]
    assert splits["train"] | {"filtered_by": None} == {
        "source": "train.de", "target": "train.en", "pairs": 1995, "read": 2000, "skipped_empty": 2,
        "filtered_long": 3, "crlf_lines": 0, "line_breaks_replaced": 0, "filtered_by": None,
        "bytes": {"source": (out / "train.de").stat().st_size, "target": (out / "train.en").stat().st_size}}
    assert splits["train"]["filtered_by"] == {"chars": 1, "tokens": 1, "ratio": 1}
    assert (splits["valid"]["pairs"], splits["valid"]["skipped_empty"], splits["valid"]["filtered_long"]) == (199, 1, 0)
    assert splits["flickr16"]["pairs"] == 100

    dropped = {9, 19, 29, 39, 49}
    assert (out / "train.de").read_text(encoding="utf-8").split("\n")[:-1] == [
        line.strip() for i, line in enumerate(de) if i not in dropped]
    assert (out / "valid.de").read_text(encoding="utf-8").split("\n")[6 - 1] == valid_de[6].strip()
    assert b"\r" not in (out / "train.en").read_bytes()

    prepared = load_prepared(out)
    assert prepared.tokenizer_dir == out / "tokenizer"
    assert prepared.splits["flickr16"] == (out / "flickr16.de", out / "flickr16.en")
    assert prepared.meta == meta and prepared.src_lang == "de"
    report = capsys.readouterr().out
    assert "1,995" in report and "filtered" in report

    # the same inputs and options again: nothing is rebuilt
    before = snapshot(out)
    prepare_data(out, train=train, valid=valid, tests={"flickr16": test}, vocab_size=VOCAB)
    assert "already prepared" in capsys.readouterr().out
    assert snapshot(out) == before

    (out / "valid.en").unlink()
    with pytest.raises(TiekdError, match="valid.en.*Fix"):
        load_prepared(out)


def test_cli_tsv_with_crlf_and_blank_lines(tmp_path, corpus):
    de, en = head("train.de", 2000), head("train.en", 2000)
    pairs = [f"{s}\t{t}" for s, t in zip(de, en)]
    pairs[99] = ""  # a blank line counts as an empty pair
    pairs[199] = de[199] + "\t "
    tsv = write(tmp_path / "train.tsv", pairs, newline="\r\n")
    parser = argparse.ArgumentParser()
    add_prepare_arguments(parser)
    args = parser.parse_args([
        "--out", str(tmp_path / "out"), "--tsv-train", str(tsv), "--valid", *map(str, corpus["valid"]),
        "--test", "flickr16", *map(str, corpus["test"]), "--vocab-size", str(VOCAB),
    ])
    assert run_prepare(args) == 0

    train = load_prepared(tmp_path / "out").meta["splits"]["train"]
    assert (train["pairs"], train["skipped_empty"], train["crlf_lines"]) == (1998, 2, 2000)
    assert (tmp_path / "out/train.en").read_text(encoding="utf-8").split("\n")[0] == en[0].strip()
    assert b"\r" not in (tmp_path / "out/train.de").read_bytes()


def test_stray_line_breaks_inside_a_line_are_replaced(tmp_path, corpus):
    de = head("train.de", 2000)
    de[5] = "Ein Hund\u2028läuft\rschnell."
    out = prepare(tmp_path / "out", corpus, train=(write(tmp_path / "de", de), corpus["train"][1]))
    assert (out / "train.de").read_text(encoding="utf-8").splitlines()[5] == "Ein Hund läuft schnell."
    assert load_prepared(out).meta["splits"]["train"]["line_breaks_replaced"] == 1


def _bad_line_counts(tmp_path, corpus):
    write(tmp_path / "in/train.en", head("train.en", 1999))
    return {}, ["train.de:2000", "train.en", "2000 lines", "1999 lines"]


def _invalid_utf8(tmp_path, corpus):
    lines = (tmp_path / "in/train.de").read_bytes().split(b"\n")
    lines[6] = b"Eine Stra\xdfe in der Stadt."  # latin-1, line 7
    (tmp_path / "in/train.de").write_bytes(b"\n".join(lines))
    return {}, ["train.de:7", "invalid UTF-8", "byte offset 9"]


def _empty_file(tmp_path, corpus):
    (tmp_path / "in/valid.en").write_bytes(b"")
    return {}, ["valid.en", "empty"]


def _missing_file(tmp_path, corpus):
    return {"valid": (corpus["valid"][0], tmp_path / "in/nope.en")}, ["nope.en", "no such file"]


def _bad_tsv_line(tmp_path, corpus):
    pairs = [f"{s}\t{t}" for s, t in zip(head("train.de", 50), head("train.en", 50))]
    pairs[4] += "\textra"
    return {"train": None, "tsv_train": write(tmp_path / "in/pairs.tsv", pairs)}, ["pairs.tsv:5", "exactly one tab"]


def _empty_side_is_an_error(tmp_path, corpus):
    lines = head("train.en", 2000)
    lines[11] = " "
    write(tmp_path / "in/train.en", lines)
    return {"empty": "error"}, ["train.en:12", "empty sentence"]


@pytest.mark.parametrize("make_bad_input", [
    _bad_line_counts, _invalid_utf8, _empty_file, _missing_file, _bad_tsv_line, _empty_side_is_an_error,
])
def test_bad_input_gets_a_clear_error_and_writes_nothing(tmp_path, corpus, make_bad_input):
    kwargs, expected = make_bad_input(tmp_path, corpus)
    with pytest.raises(TiekdError) as error:
        prepare(tmp_path / "runs/data", corpus, **kwargs)
    message = str(error.value)
    for part in expected + ["Fix:"]:
        assert part in message, f"{part!r} not in {message!r}"
    assert not (tmp_path / "runs").exists()


def test_failing_preparation_leaves_no_partial_output(tmp_path, corpus):
    # 50,000 pieces is more than 2,000 pairs can give: SentencePiece fails after the build has started
    with pytest.raises(TiekdError, match="vocab.*Fix"):
        prepare_data(tmp_path / "runs/data", train=corpus["train"], valid=corpus["valid"], vocab_size=50_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_existing_output_is_refused_unchanged_unless_overwrite(tmp_path, corpus):
    out = prepare(tmp_path / "out", corpus)
    before = snapshot(out)
    with pytest.raises(TiekdError, match="different preparation.*vocab_size.*--overwrite"):
        prepare_data(out, train=corpus["train"], valid=corpus["valid"], vocab_size=VOCAB - 100)
    assert snapshot(out) == before

    prepare_data(out, train=corpus["train"], valid=corpus["valid"], vocab_size=VOCAB - 100, overwrite=True)
    assert load_prepared(out).meta["vocab_size"] == VOCAB - 100
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "out"]  # no leftovers beside it

    # a folder that is not a preparation is never replaced, even with overwrite
    other = tmp_path / "notes"
    write(other / "todo.txt", ["keep me"])
    with pytest.raises(TiekdError, match="not a tiekd prepared-data folder"):
        prepare(other, corpus, overwrite=True)
    assert snapshot(other) == {"todo.txt": b"keep me\n"}


def test_load_prepared_names_what_is_missing(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TiekdError, match="meta.json is missing.*tiekd prepare"):
        load_prepared(tmp_path / "empty")
    with pytest.raises(TiekdError, match="no such folder.*tiekd prepare"):
        load_prepared(tmp_path / "nope")


def test_multi30k_is_found_from_env_or_named_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(multi30k.DIR_ENV, str(MULTI30K))
    assert multi30k.find_multi30k() == MULTI30K.resolve()
    files = multi30k.multi30k_files(MULTI30K, "de", "en")
    assert list(files) == list(multi30k.SPLITS) and files["valid"] == (MULTI30K / "val.de", MULTI30K / "val.en")
    with pytest.raises(TiekdError, match="nope.*no such folder.*Fix"):
        multi30k.find_multi30k(tmp_path / "nope")


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A loopback HTTP server holding gzipped Multi30k slices; yields (base URL, their checksums)."""
    served = tmp_path / "served"
    (served / "raw").mkdir(parents=True)
    checksums = {}
    for stem in multi30k.SPLITS.values():
        for lang in ("de", "en"):
            text = "".join(line + "\n" for line in head(f"{stem}.{lang}", 2000 if stem == "train" else 50))
            data = text.encode("utf-8")
            (served / "raw" / f"{stem}.{lang}.gz").write_bytes(gzip.compress(data))
            checksums[f"{stem}.{lang}"] = hashlib.sha256(data).hexdigest()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    yield f"http://127.0.0.1:{server.server_address[1]}/raw", checksums
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_then_prepare(tmp_path, mirror, monkeypatch, capsys):
    url, checksums = mirror
    monkeypatch.setattr(multi30k, "SHA256", checksums)
    monkeypatch.setenv(multi30k.URL_ENV, url)

    out = prepare_data(tmp_path / "out", download=True, multi30k_dir=tmp_path / "m30k", vocab_size=VOCAB)

    assert sorted(p.name for p in (tmp_path / "m30k").iterdir()) == sorted(checksums)
    meta = load_prepared(out).meta
    assert meta["inputs"]["kind"] == "multi30k" and meta["inputs"]["downloaded"]
    assert {name: s["pairs"] for name, s in meta["splits"].items()} == {
        "train": 2000, "valid": 50, "test_2016_flickr": 50, "test_2017_flickr": 50, "test_2017_mscoco": 50,
        "test_2018_flickr": 50}
    assert f"{url}/train.de.gz" in capsys.readouterr().out


def test_download_checksum_mismatch_keeps_nothing(tmp_path, mirror):
    url, checksums = mirror
    dest = tmp_path / "m30k"
    with pytest.raises(TiekdError, match=r"train\.de\.gz: checksum mismatch.*Fix"):
        multi30k.download_multi30k(dest, base_url=url, checksums={**checksums, "train.de": "0" * 64},
                                   log=None)
    assert list(dest.iterdir()) == []

    with pytest.raises(TiekdError, match=r"download failed.*404.*Fix"):
        multi30k.download_multi30k(dest, base_url=url + "/missing", checksums=checksums, log=None)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("char", list("\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"))
def test_every_character_splitlines_breaks_at_is_replaced_inside_a_block(tmp_path, char):
    """The block path's quick scan and the line-by-line path agree on every character str.splitlines()
    would break a line at (\\r is the CRLF test's): the line keeps a space there and is counted."""
    from tiekd.data.corpus import _BREAK_CHARS, TextStats, iter_text_lines

    assert set(_BREAK_CHARS) == {c for c in map(chr, range(0x3000)) if len(f"a{c}b".splitlines()) == 2} - {"\n"}
    path = tmp_path / "t.de"
    path.write_text("eins\n" + f"zwei{char}drei\n" + "vier\n", encoding="utf-8")
    stats = TextStats(path)
    assert list(iter_text_lines(path, stats)) == ["eins", "zwei drei", "vier"] and stats.line_breaks_replaced == 1


def test_text_is_read_in_blocks_with_the_same_lines_counts_and_errors_as_line_by_line(tmp_path):
    """iter_text_lines reads blocks of whole lines; any block size gives the same lines, CRLF and stray
    line-break counts and SHA-256, and a bad byte in a later block is named with its own line number."""
    import hashlib

    from tiekd.data.corpus import TextStats, iter_text_lines

    raw = ("\ufeffEin Hund.\r\nZwei Hunde\n" + "Straße\u2028mit Bruch\n" + "".join(f"Zeile {i}\n" for i in range(50))
           + "x\x0cy\r\n" + "letzte ohne Ende").encode("utf-8")
    path = tmp_path / "t.de"
    path.write_bytes(raw)
    results = []
    for block in (1, 7, 64, 1 << 22):
        stats = TextStats(path)
        lines = list(iter_text_lines(path, stats, block=block))
        results.append((lines, stats.crlf_lines, stats.line_breaks_replaced, stats.sha256, stats.bytes))
    assert all(result == results[0] for result in results)
    lines, crlf, replaced, sha, size = results[0]
    assert lines[:3] == ["Ein Hund.", "Zwei Hunde", "Straße mit Bruch"] and lines[-2:] == ["x y", "letzte ohne Ende"]
    assert (crlf, replaced, sha, size) == (2, 2, hashlib.sha256(raw).hexdigest(), len(raw))
    bad = raw.replace(b"Zeile 40", b"Zeile \xff0")
    path.write_bytes(bad)
    for block in (7, 1 << 22):
        with pytest.raises(TiekdError, match=r"t\.de:44: invalid UTF-8 \(byte b'\\xff' at byte offset 6 of the line"):
            list(iter_text_lines(path, block=block))
