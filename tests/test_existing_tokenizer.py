"""Distilling a teacher with its own tokenizer: the OPUS-MT layout (separate source.spm and target.spm,
one shared vocab.json in the model's own order), built here from real Multi30k text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import head, small_config
from tiekd.errors import TiekdError


def _spm(lines, prefix, vocab_size):
    import sentencepiece as spm

    text = prefix.with_suffix(".txt")
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(prefix), vocab_size=vocab_size,
                                   model_type="unigram", character_coverage=1.0, eos_id=0, unk_id=1, bos_id=-1,
                                   pad_id=-1, minloglevel=2)
    return prefix.with_suffix(".model")


@pytest.fixture(scope="module")
def opus_layout(tmp_path_factory, multi30k):
    """A tokenizer folder as OPUS-MT ships one: a German and an English SentencePiece model (different
    pieces), one vocab.json listing the source pieces, then the target pieces not yet in it, then <pad>."""
    import sentencepiece as spm
    from transformers import MarianTokenizer

    root = tmp_path_factory.mktemp("opus")
    german, english = head(multi30k / "train.de", 1500), head(multi30k / "train.en", 1500)
    source_model, target_model = _spm(german, root / "de", 400), _spm(english, root / "en", 300)
    vocab = {"</s>": 0, "<unk>": 1}
    for model in (source_model, target_model):
        processor = spm.SentencePieceProcessor(model_file=str(model))
        for i in range(2, processor.get_piece_size()):
            vocab.setdefault(processor.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(str(source_model), str(target_model), str(root / "vocab.json"))
    tokenizer.save_pretrained(str(root / "tokenizer"))
    for lang, lines in (("de", german), ("en", english)):
        (root / f"train.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (root / f"val.{lang}").write_text("\n".join(head(multi30k / f"val.{lang}", 40)) + "\n", encoding="utf-8")
    return root, vocab, target_model


def _prepare(root, out, tokenizer):
    from tiekd.data.prepare import prepare_data

    return prepare_data(out, train=(root / "train.de", root / "train.en"), valid=(root / "val.de", root / "val.en"),
                        tokenizer=tokenizer, verbose=False)


def test_prepare_keeps_the_tokenizer_and_encodes_targets_with_the_target_model(opus_layout, tmp_path):
    import sentencepiece as spm

    from tiekd.data.batching import encode_pair_files
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    root, vocab, target_model = opus_layout
    data = load_prepared(_prepare(root, tmp_path / "data", root / "tokenizer"))
    tokenizer = load_tokenizer(data.tokenizer_dir)
    assert tokenizer.get_vocab() == vocab and data.meta["vocab_size"] == len(vocab)
    assert (data.tokenizer_dir / "target.spm").read_bytes() == target_model.read_bytes()
    corpus = encode_pair_files(tokenizer, *data.splits["train"])
    targets = (tmp_path / "data" / "train.en").read_text(encoding="utf-8").splitlines()
    pieces = spm.SentencePieceProcessor(model_file=str(target_model))
    differs = 0
    for line, ids in zip(targets[:50], corpus.targets[:50]):
        assert ids == [vocab[p] for p in pieces.encode(line, out_type=str)] + [tokenizer.eos_token_id]
        differs += ids != tokenizer(line)["input_ids"]  # what the source model would have made of it
    assert differs > 0
    # the same tokenizer again is the same preparation; another one is a different preparation
    _prepare(root, tmp_path / "data", root / "tokenizer")
    with pytest.raises(TiekdError, match="different preparation"):
        _prepare(root, tmp_path / "data", None)


def test_an_opus_layout_teacher_is_distilled_translated_and_averaged(opus_layout, tmp_path, prepared):
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.inference.translate import DecodeOptions, translate_sentences
    from tiekd.models import load_model
    from tiekd.training.average import average_checkpoints, find_last_checkpoints
    from tiekd.training.trainer import run_training

    root, vocab, _ = opus_layout
    data = _prepare(root, tmp_path / "data", root / "tokenizer")
    run_training(small_config(data, tmp_path / "teacher", max_updates=20, valid_bleu=False), quiet=True)
    teacher = tmp_path / "teacher" / "checkpoints" / "best"  # a model folder in the OPUS-MT layout
    assert load_tokenizer(teacher).get_vocab() == vocab

    # the user's path: prepare with the teacher's own tokenizer, then distill
    data2 = _prepare(root, tmp_path / "data2", teacher)
    summary = run_training(small_config(data2, tmp_path / "student", method="word-kd", teacher=str(teacher),
                                        max_updates=4, valid_every=2, valid_max_sentences=5), quiet=True)
    assert summary["step"] == 4
    model_dir = average_checkpoints(find_last_checkpoints(tmp_path / "student", 2), tmp_path / "avg")
    student, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    assert tokenizer.get_vocab() == vocab and student.config.vocab_size == len(vocab)
    hyps = translate_sentences(student, tokenizer, head(root / "val.de", 3), DecodeOptions(beam=2, max_length=8))
    assert len(hyps) == 3 and all(isinstance(h, str) for h in hyps)

    # a teacher whose vocabulary is not the data's is refused, naming both
    with pytest.raises(TiekdError, match="vocabulary .* differs"):
        run_training(small_config(prepared, tmp_path / "mismatch", method="word-kd", teacher=str(teacher)), quiet=True)
    # ...but sequence-level KD passes text, not distributions: CTranslate2 decodes the teacher's own
    # vocabulary and the student's tokenizer reads its translations
    summary = run_training(small_config(prepared, tmp_path / "seq", method="seq-kd", teacher=str(teacher),
                                        max_updates=2, train_split="valid", valid_bleu=False, valid_every=100,
                                        seq_kd_beam=1), quiet=True)
    targets = (tmp_path / "seq" / "seqkd" / "train.hyp").read_text(encoding="utf-8").splitlines()
    assert summary["step"] == 2 and len(targets) == 100


def test_a_folder_without_a_tokenizer_is_refused_clearly(opus_layout, tmp_path):
    root, _, _ = opus_layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(TiekdError, match=r"empty: not a tokenizer folder"):
        _prepare(root, tmp_path / "data", tmp_path / "empty")
    assert not (tmp_path / "data").exists()  # nothing half-written


ODD_LINES = ["", "  leading and trailing  ", "a  double  space", ">>de<< Ein Hund läuft.", ">>en<<", "ein </s> im Text",
             "<unk> und <pad>", "„Zitat“ – Straße … ﬁ", "\ttab", "ein Wort, das kein Stück kennt: ЖЩЮ 漢字"]


@pytest.mark.parametrize("layout", ["tiekd", "opus"])
def test_batch_encoding_gives_the_tokenizers_own_ids(layout, opus_layout, teacher_dir, multi30k):
    """encode_texts' SentencePiece batch path gives, line for line, the ids of the tokenizer's own call,
    on both sides, for our tokenizer (one vocabulary) and the OPUS-MT layout (two SentencePiece models),
    on real text and on lines with language codes, special tokens, odd spaces and unknown characters."""
    from tiekd.data.batching import _marian_encoder, encode_texts
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(teacher_dir if layout == "tiekd" else opus_layout[0] / "tokenizer")
    for target, side in ((False, "de"), (True, "en")):
        lines = head(multi30k / f"train.{side}", 2000) + ODD_LINES
        assert _marian_encoder(tokenizer, target) is not None  # the batch path is taken
        own = (tokenizer(text_target=lines) if target else tokenizer(lines))["input_ids"]
        assert encode_texts(tokenizer, lines, target=target) == own


def test_batch_encoding_looks_added_tokens_up_first_and_warns_of_cut_lines(teacher_dir, tmp_path):
    """A piece that is also an added token gets the added token's id, as in the tokenizer's own call;
    lines longer than the model's positions are cut, and a warning counts them."""
    from tiekd.data.batching import encode_pair_files, encode_texts
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(teacher_dir)  # a fresh copy: the shared teacher's tokenizer stays as it is
    piece = tokenizer.spm_source.encode("Hund", out_type=str)[0]
    before = tokenizer.encoder.pop(piece)  # a piece that only an added token knows, under another id
    tokenizer.add_tokens([piece])
    added = tokenizer.added_tokens_encoder[piece]
    lines = ["Ein Hund läuft.", "Zwei Hunde.", "Katze"]
    assert encode_texts(tokenizer, lines) == tokenizer(lines)["input_ids"]
    assert added != before and added in encode_texts(tokenizer, lines)[0]

    (tmp_path / "s.de").write_text("Ein Hund läuft über die grüne Wiese.\nJa.\n", encoding="utf-8")
    (tmp_path / "t.en").write_text("A dog runs across the green meadow.\nYes.\n", encoding="utf-8")
    with pytest.warns(UserWarning) as caught:
        corpus = encode_pair_files(load_tokenizer(teacher_dir), tmp_path / "s.de", tmp_path / "t.en", max_positions=5)
    said = sorted(str(w.message).split(": ", 1)[1][:55] for w in caught)
    assert said == ["1 of 2 lines have more than the model's 5 positions and"] * 2
    assert {Path(str(w.message).split(": ", 1)[0]).name for w in caught} == {"s.de", "t.en"}
    assert max(map(len, corpus.sources + corpus.targets)) == 5


def test_shortlist_of_a_tokenizer_with_separate_vocabularies(opus_layout, tmp_path):
    """Some OPUS-MT models number target tokens in a vocabulary of their own (`separate_vocabs`). Here the
    target vocabulary is the larger one, so target ids exceed every source id: the shortlist must count
    each side in its own vocabulary and name tokens by their own side's strings."""
    from collections import Counter

    import sentencepiece as spm
    from transformers import MarianTokenizer

    from tiekd.inference.shortlist import ShortlistOptions, vocabulary_map_rules

    root, _, _ = opus_layout
    models = {"source": root / "en.model", "target": root / "de.model"}  # English -> German: 300 and 400 pieces
    processors, vocabularies = {}, {}
    for side, model in models.items():
        processors[side] = spm.SentencePieceProcessor(model_file=str(model))
        vocabulary = {"</s>": 0, "<unk>": 1}
        vocabulary.update({processors[side].id_to_piece(i): i for i in range(2, processors[side].get_piece_size())})
        vocabulary["<pad>"] = len(vocabulary)
        vocabularies[side] = vocabulary
        (tmp_path / f"{side}.json").write_text(json.dumps(vocabulary, ensure_ascii=False), encoding="utf-8")
    tokenizer = MarianTokenizer(str(models["source"]), str(models["target"]), str(tmp_path / "source.json"),
                                target_vocab_file=str(tmp_path / "target.json"), separate_vocabs=True)
    assert len(vocabularies["target"]) > len(vocabularies["source"])
    options = ShortlistOptions(per_token=5, frequent=10, min_count=2)
    always, rules = vocabulary_map_rules(tokenizer, root / "train.en", root / "train.de", options, chunk_lines=400)

    # the definition, over SentencePiece pieces of each side's own model
    def piece_sets(side, path):
        keep = set(vocabularies[side]) - {"</s>", "<unk>", "<pad>"}
        return [set(processors[side].encode(line, out_type=str)) & keep
                for line in path.read_text(encoding="utf-8").splitlines()]

    source_sets, target_sets = piece_sets("source", root / "train.en"), piece_sets("target", root / "train.de")
    target_count = Counter(t for pieces in target_sets for t in pieces)
    want_always = [t for t, _ in sorted(target_count.items(), key=lambda item: (-item[1], item[0]))[:10]]
    source_count, pair_count = Counter(), {}
    for source_pieces, target_pieces in zip(source_sets, target_sets):
        for s in source_pieces:
            source_count[s] += 1
            pair_count.setdefault(s, Counter()).update(target_pieces - set(want_always))
    want_rules = {s: [t for t, _ in sorted(pair_count[s].items(), key=lambda item: (-item[1], item[0]))[:5]]
                  for s, seen in source_count.items() if seen >= 2 and pair_count[s]}
    assert always == want_always
    assert rules == want_rules and set(rules) <= set(vocabularies["source"])
