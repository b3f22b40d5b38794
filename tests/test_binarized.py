"""Prepared data as token ids on disk (tiekd/data/binarized.py) and the streamed `prepare`."""

from __future__ import annotations

import fcntl
import json
import re

import numpy as np
import pytest
import torch

from conftest import head
from tiekd.errors import TiekdError


def test_the_mapped_corpus_gives_the_ids_and_batches_of_encoding_at_the_start(prepared):
    from tiekd.data.batching import collate, encode_pair_files, make_batches
    from tiekd.data.binarized import BinarizedCorpus, load_corpus
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    data = load_prepared(prepared)
    tokenizer = load_tokenizer(data.tokenizer_dir)
    for split in ("train", "valid"):
        mapped = load_corpus(data, data.splits[split], tokenizer, 512)
        encoded = encode_pair_files(tokenizer, *data.splits[split], 512)
        assert isinstance(mapped, BinarizedCorpus) and len(mapped) == len(encoded)
        assert all(mapped.source(i).tolist() == encoded.sources[i] and mapped.target(i).tolist() == encoded.targets[i]
                   for i in range(len(encoded)))
        batches = make_batches(mapped, 1024)
        assert batches == make_batches(encoded, 1024)
        one, other = collate(mapped, batches[3]), collate(encoded, batches[3])
        assert torch.equal(one.input_ids, other.input_ids) and torch.equal(one.labels, other.labels)
        assert one.num_target_tokens == other.num_target_tokens
    # a copy in another process (a pickled dataset, a forked loader) opens the files itself
    import pickle

    copy = pickle.loads(pickle.dumps(mapped))
    assert copy.sources._files is None and copy.target(5).tolist() == encoded.targets[5]
    assert mapped.sources[-1].tolist() == encoded.sources[-1]
    with pytest.raises(IndexError):
        mapped.sources[len(mapped)]
    # cut to the model's positions as encoding cuts them, </s> kept last
    short = load_corpus(data, data.splits["train"], tokenizer, 6)
    longest = int(np.argmax(short.sources.lengths))
    assert short.source(longest).tolist() == encode_pair_files(tokenizer, *data.splits["train"], 6).sources[longest]


def test_a_file_a_run_writes_gets_its_ids_stored_beside_it_once(prepared, tmp_path, monkeypatch):
    """Sequence-level KD's targets (a text file a run writes) are encoded once into ids beside them, read
    as encoding them would give; a changed or half-written file's ids do not count and are made again."""
    import os
    import shutil

    from tiekd.data import binarized
    from tiekd.data.batching import encode_pair_files
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    data = load_prepared(prepared)
    tokenizer = load_tokenizer(data.tokenizer_dir)
    source, target = data.splits["valid"]
    hyp = tmp_path / "seqkd" / "train.hyp"
    hyp.parent.mkdir()
    shutil.copy(target, hyp)
    monkeypatch.setattr(binarized, "BESIDE_CHUNK", 7)  # several chunks
    assert binarized.load_corpus(data, (source, hyp), tokenizer, 512).__class__.__name__ == "EncodedCorpus"
    record = binarized.binarize_beside(hyp, tokenizer, target=True)
    assert binarized.record_beside(hyp, len(tokenizer), target=True) == record
    assert binarized.record_beside(hyp, len(tokenizer), target=False) is None  # the other side's model
    stored = binarized.load_corpus(data, (source, hyp), tokenizer, 512)
    encoded = encode_pair_files(tokenizer, source, hyp, 512)
    assert isinstance(stored, binarized.BinarizedCorpus)
    assert [stored.target(i).tolist() for i in range(len(stored))] == encoded.targets
    # the file changed after its ids were written (size or time): its ids no longer count
    hyp.write_text(hyp.read_text(encoding="utf-8").replace("a", "b", 1), encoding="utf-8")
    os.utime(hyp, ns=(1, 1))
    assert binarized.record_beside(hyp, len(tokenizer), target=True) is None
    # an interrupted write: the record is removed first, so half-written ids never look current
    monkeypatch.setattr(binarized.IdsWriter, "close", lambda self: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        binarized.binarize_beside(hyp, tokenizer, target=True)
    assert not (tmp_path / "seqkd" / "train.hyp.ids.json").exists()
    assert binarized.record_beside(hyp, len(tokenizer), target=True) is None


def test_the_length_order_is_the_stable_sort_by_target_then_source_length():
    """The counting sort's order equals sorted(key=(target length, source length, index)) for any chunking,
    in int32, and sentences too long for its key table go through lexsort to the same order."""
    from tiekd.data.batching import length_order

    rng = np.random.default_rng(7)
    for count in (0, 1, 9, 5000):
        sources = rng.integers(1, 40, count).astype(np.uint16)
        targets = rng.integers(1, 40, count).astype(np.uint16)
        expected = sorted(range(count), key=lambda i: (targets[i], sources[i], i))
        for chunk in (1, 7, 1 << 18):
            order = length_order(sources, targets, chunk)
            assert order.dtype == np.int32 and order.tolist() == expected
    sources, targets = np.asarray([70000, 3, 70000, 3], dtype=np.int32), np.asarray([5000, 5000, 2, 2], dtype=np.int32)
    assert length_order(sources, targets).tolist() == [3, 2, 1, 0]


def test_lengths_are_read_from_the_index_in_two_bytes_and_widened_for_long_sentences(tmp_path):
    from tiekd.data.binarized import HEADER, MAGIC, VERSION, read_lengths

    for lengths, dtype in (([3, 1, 65535, 7], np.uint16), ([3, 1, 65536, 7], np.int32)):
        index = tmp_path / "x.idx"
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype("<i8")
        index.write_bytes(HEADER.pack(MAGIC, VERSION, 2, len(lengths)) + offsets.tobytes())
        for block in (1, 3, 1 << 18):
            read = read_lengths(index, len(lengths), block)
            assert read.dtype == dtype and read.tolist() == lengths


def test_a_damaged_id_file_is_named_with_the_fix(prepared, tmp_path):
    import shutil

    from tiekd.data.binarized import load_corpus
    from tiekd.data.prepare import load_prepared, verify_prepared
    from tiekd.data.tokenizer import load_tokenizer

    copy = tmp_path / "data"
    shutil.copytree(prepared, copy)
    assert "match their checksums" in verify_prepared(copy)
    data, tokenizer = load_prepared(copy), load_tokenizer(copy / "tokenizer")
    ids = copy / "train.en.ids"
    ids.write_bytes(ids.read_bytes()[:-6])  # an interrupted copy
    with pytest.raises(TiekdError, match=r"train\.en\.ids: .* bytes where its index says .* \(truncated or damaged\)\. "
                                         r"Fix: rebuild the folder with `tiekd prepare --overwrite`"):
        load_corpus(data, data.splits["train"], tokenizer, 512)
    shutil.copy(prepared / "train.en.ids", ids)
    flipped = copy / "valid.de.ids"
    raw = bytearray(flipped.read_bytes())
    raw[10] ^= 0xFF  # same size: only the full check sees it
    flipped.write_bytes(bytes(raw))
    with pytest.raises(TiekdError, match=r"valid\.de\.ids does not match its checksum.*Fix: rebuild"):
        verify_prepared(copy)
    (copy / "train.de.idx").write_bytes(b"not an index at all, but long enough")
    with pytest.raises(TiekdError, match=r"train\.de\.idx: not a tiekd id index"):
        load_corpus(data, data.splits["train"], tokenizer, 512)


def test_a_folder_prepared_before_binarizing_is_still_read(prepared, tmp_path):
    import shutil

    from tiekd.data.batching import EncodedCorpus
    from tiekd.data.binarized import load_corpus
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    old = tmp_path / "old"
    shutil.copytree(prepared, old)
    meta = json.loads((old / "meta.json").read_text())
    del meta["binarized"]
    (old / "meta.json").write_text(json.dumps(meta))
    for path in old.glob("*.id[sx]"):
        path.unlink()
    data = load_prepared(old)
    assert isinstance(load_corpus(data, data.splits["train"], load_tokenizer(old / "tokenizer"), 512), EncodedCorpus)


def _corpus(tmp_path, multi30k, n=600):
    for lang in ("de", "en"):
        (tmp_path / f"train.{lang}").write_text("\n".join(head(multi30k / f"train.{lang}", n)) + "\n", encoding="utf-8")
        (tmp_path / f"val.{lang}").write_text("\n".join(head(multi30k / f"val.{lang}", 20)) + "\n", encoding="utf-8")
    return {"train": (tmp_path / "train.de", tmp_path / "train.en"), "valid": (tmp_path / "val.de", tmp_path / "val.en")}


def test_the_tokenizer_learns_from_a_sample_of_a_large_corpus(tmp_path, multi30k, capsys):
    from tiekd.data.prepare import prepare_data

    files = _corpus(tmp_path, multi30k)
    out = prepare_data(tmp_path / "sampled", **files, vocab_size=300, tokenizer_sample=400)
    said = capsys.readouterr().out
    assert "on 200 of 600 training pairs (--tokenizer-sample 400 sentences)" in said
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer_sample"] == 400 and meta["splits"]["train"]["pairs"] == 600
    assert not list(out.glob(".*"))  # the sample and the staged text are gone
    full = prepare_data(tmp_path / "full", **files, vocab_size=300, verbose=False)
    assert "tokenizer_sample" not in json.loads((full / "meta.json").read_text())  # the default: as before
    with pytest.raises(TiekdError, match=r"--tokenizer-sample 1 is out of range"):
        prepare_data(tmp_path / "bad", **files, vocab_size=300, tokenizer_sample=1)


def test_a_second_prepare_into_a_folder_being_written_is_refused(tmp_path, multi30k):
    from tiekd.data.prepare import prepare_data

    files = _corpus(tmp_path, multi30k, n=200)
    out = tmp_path / "data"
    with open(tmp_path / ".data.lock", "a+") as held:  # what a running prepare holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(TiekdError, match=re.escape(f"{out}: another `tiekd prepare` is writing this folder")):
            prepare_data(out, **files, vocab_size=300, verbose=False)
        # the refused one left the holder's lock file in place, so a third is refused too
        assert (tmp_path / ".data.lock").exists()
        with pytest.raises(TiekdError, match="another `tiekd prepare` is writing this folder"):
            prepare_data(out, **files, vocab_size=300, verbose=False)
    assert not out.exists()
    prepare_data(out, **files, vocab_size=300, verbose=False)
    assert prepare_data(out, **files, vocab_size=300, verbose=False) == out  # the same again: a no-op


def test_the_prepare_lock_is_retaken_when_its_file_was_removed_under_it(tmp_path, monkeypatch):
    """A process that locks a lock file its holder removed a moment before holds nothing: it must lock
    the file now under that name (else two prepares could write one folder)."""
    import fcntl as real_fcntl

    from tiekd.data import prepare as prepare_module

    out, lock = tmp_path / "data", tmp_path / ".data.lock"
    calls = []
    original = real_fcntl.flock

    def flock_after_the_holder_left(handle, flags):
        calls.append(handle.fileno())
        if len(calls) == 1:  # the holder removes the file between our open and our lock
            lock.unlink()
        return original(handle, flags)

    monkeypatch.setattr(real_fcntl, "flock", flock_after_the_holder_left)
    with prepare_module._only_writer(out):
        assert len(calls) == 2 and lock.exists()
        monkeypatch.setattr(real_fcntl, "flock", original)
        with open(lock, "a+") as other, pytest.raises(BlockingIOError):
            original(other, real_fcntl.LOCK_EX | real_fcntl.LOCK_NB)  # the lock on the file under the name is held
    assert not lock.exists()
