"""CTranslate2 export: a briefly trained micro model translates as Hugging Face's generate does, word for
word wherever the search meets no near-tie, which two float engines may break either way."""

from __future__ import annotations

import argparse

import pytest
import torch
from transformers import LogitsProcessor

from tiekd.errors import TiekdError
from tiekd.inference.export import CTranslate2Translator, add_export_arguments, export_ctranslate2, run_export

from conftest import head


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, multi30k):
    """A micro model trained 200 steps on 2,000 real pairs: junk translations, but ones that depend on
    the source, so matching outputs mean something."""
    from transformers import AutoTokenizer

    from tiekd.data.tokenizer import train_joint_sentencepiece
    from tiekd.models import build_model, keep_pad_embedding_zero

    root = tmp_path_factory.mktemp("export")
    sources, targets = head(multi30k / "train.de", 2000), head(multi30k / "train.en", 2000)
    for lang, lines in (("de", sources), ("en", targets)):
        (root / f"train.{lang}").write_text("\n".join(lines) + "\n", encoding="utf-8")
    tokenizer_dir = train_joint_sentencepiece([root / "train.de", root / "train.en"], root / "tokenizer",
                                              vocab_size=500)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    model = build_model("micro", tokenizer)
    keep_pad_embedding_zero(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # d_model 32: a second thread only adds synchronisation (10x slower when busy)
    try:
        for step in range(200):
            start = step * 32 % len(sources)
            batch = tokenizer(sources[start:start + 32], text_target=targets[start:start + 32],
                              return_tensors="pt", padding=True)
            batch["labels"][batch["labels"] == tokenizer.pad_token_id] = -100
            loss = model(**batch).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    assert model.get_input_embeddings().weight[tokenizer.pad_token_id].abs().max() == 0
    model.eval()
    out = root / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def hf_model(model_dir):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    return AutoModelForSeq2SeqLM.from_pretrained(str(model_dir)).eval(), AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="module")
def ct2_float32(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct2") / "float32"
    export_ctranslate2(model_dir, out, quantization="float32")
    return out


@pytest.fixture(scope="module")
def german(multi30k) -> list[str]:
    return head(multi30k / "test_2016_flickr.de", 10)


# Two float engines agree to about 1e-5 on a logit or a score; a choice decided by less than this may
# go either way on a given machine (thread count, SIMD width), so only wider margins must match.
NEAR_TIE = 1e-3


class RenormalizeWithoutPad(LogitsProcessor):
    """Make `generate` score beams as CTranslate2 does. CTranslate2 drops `<pad>` from a Marian vocabulary,
    so its log-probabilities are normalised over the other tokens; `generate` only sets the banned
    `<pad>`'s log-probability to -inf after the softmax, which lowers each step's score by
    -log(1 - p(<pad>)), an amount that differs between hypotheses (measured here: up to 0.04 on a
    normalised score, enough to reorder close beams). Beam search gets log-probabilities here."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, input_ids, scores):
        return without_pad(scores, self.pad_id)


def without_pad(logits: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Log-probabilities over the vocabulary without `<pad>` (CTranslate2's view of a Marian model)."""
    return logits.index_fill(-1, torch.tensor([pad_id], device=logits.device), float("-inf")).log_softmax(-1)


def hf_generate(hf_model, sentences, num_beams=1, max_new_tokens=20, **kwargs):
    """(translations, generate's output with its per-step scores)."""
    model, tokenizer = hf_model
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    beam = {"length_penalty": 0.6, "early_stopping": True} if num_beams > 1 else {}
    with torch.no_grad():
        output = model.generate(**batch, num_beams=num_beams, do_sample=False, max_new_tokens=max_new_tokens,
                                output_scores=True, return_dict_in_generate=True, **beam, **kwargs)
    return tokenizer.batch_decode(output.sequences, skip_special_tokens=True), output


def greedy_margins(output, eos_id: int) -> list[float]:
    """Per sentence, the smallest gap between the best and the second-best (processed) logit over the
    steps greedy search took for it, up to its `</s>`."""
    margins = []
    for row, sequence in enumerate(output.sequences[:, 1:].tolist()):  # without the decoder start
        last = sequence.index(eos_id) if eos_id in sequence else len(sequence) - 1
        top2 = torch.stack([output.scores[step][row].topk(2).values for step in range(last + 1)])
        margins.append(float((top2[:, 0] - top2[:, 1]).min()))
    return margins


def assert_greedy_match(ours, expected, output, eos_id):
    """Identical wherever greedy search never met a near-tie, and most sentences must be such."""
    margins = greedy_margins(output, eos_id)
    decisive = [margin >= NEAR_TIE for margin in margins]
    assert sum(decisive) >= 0.8 * len(expected), margins  # else the fixture would test little
    for i, (mine, theirs) in enumerate(zip(ours, expected)):
        assert mine == theirs or not decisive[i], (i, mine, theirs, margins[i])


def test_greedy_translations_match_huggingface(hf_model, ct2_float32, german):
    # forced_eos_token_id=None: generate would otherwise turn the 20th token into </s>, which
    # CTranslate2 never does (see the next test)
    expected, output = hf_generate(hf_model, german, max_new_tokens=20, forced_eos_token_id=None)
    assert len(set(expected)) >= 5, expected  # source-dependent output, not one repeated string
    ours = CTranslate2Translator(ct2_float32).translate(german, beam_size=1, max_length=20)
    assert_greedy_match(ours, expected, output, hf_model[1].eos_token_id)


def test_forced_eos_equals_one_token_less(hf_model, ct2_float32, german):
    """generate's forced </s> at max_new_tokens = CTranslate2 stopping one token earlier."""
    expected, output = hf_generate(hf_model, german, max_new_tokens=20)  # the model's forced_eos_token_id
    translator = CTranslate2Translator(ct2_float32)
    assert_greedy_match(translator.translate(german, beam_size=1, max_length=19), expected, output,
                        hf_model[1].eos_token_id)
    assert translator.translate(german, beam_size=1, max_length=20) != expected


def ct2_best(folder, tokenizer, sentences, max_length, **options) -> tuple[list[list[int]], list[float]]:
    """CTranslate2's best hypothesis of each sentence (token ids, with `</s>` unless cut at `max_length`)
    and its score."""
    import ctranslate2

    translator = ctranslate2.Translator(str(folder), device="cpu")
    tokens = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(sentences).input_ids]
    results = translator.translate_batch(tokens, return_scores=True, max_decoding_length=max_length, **options)
    ids = [tokenizer.convert_tokens_to_ids(result.hypotheses[0]) for result in results]
    ids = [hyp + [tokenizer.eos_token_id] if len(hyp) < max_length else hyp for hyp in ids]
    return ids, [result.scores[0] for result in results]


def teacher_forced_scores(hf_model, sentences, hypotheses, length_penalty=0.6) -> list[float]:
    """sum log p(hypothesis) / length**length_penalty under the PyTorch model, normalised without `<pad>`;
    `hypotheses` are token ids ending in `</s>` (`<pad>`, the decoder start and padding, is dropped)."""
    model, tokenizer = hf_model
    pad = tokenizer.pad_token_id
    scores = []
    for sentence, ids in zip(sentences, hypotheses):
        labels = torch.tensor([[t for t in ids if t != pad]])
        with torch.no_grad():
            logits = model(**tokenizer([sentence], return_tensors="pt"), labels=labels).logits
        log_probs = without_pad(logits, pad).gather(-1, labels[..., None])
        scores.append(float(log_probs.sum()) / labels.shape[1] ** length_penalty)
    return scores


def test_beam_search_matches_huggingface(hf_model, ct2_float32, german):
    """Both engines rank hypotheses by log-probability / length**0.6 (min length 0 allows an empty output,
    as generate does). Two float engines may break a near-tie between beams either way, so a sentence's
    best scores must agree, and its translations must be identical unless those scores are near-tied."""
    from transformers import LogitsProcessorList

    model, tokenizer = hf_model
    as_ctranslate2 = LogitsProcessorList([RenormalizeWithoutPad(tokenizer.pad_token_id)])
    expected, output = hf_generate(hf_model, german, num_beams=4, max_new_tokens=60, forced_eos_token_id=None,
                                   logits_processor=as_ctranslate2)
    theirs_scores = output.sequences_scores.tolist()
    ours_ids, ours_scores = ct2_best(ct2_float32, tokenizer, german, max_length=60, beam_size=4, length_penalty=0.6,
                                     min_decoding_length=0, max_batch_size=3)
    ours = tokenizer.batch_decode(ours_ids, skip_special_tokens=True)
    # each engine's score is its hypothesis's teacher-forced score under the PyTorch model
    assert teacher_forced_scores(hf_model, german, output.sequences.tolist()) == pytest.approx(theirs_scores, abs=1e-4)
    assert teacher_forced_scores(hf_model, german, ours_ids) == pytest.approx(ours_scores, abs=1e-4)
    same = [mine == theirs for mine, theirs in zip(ours, expected)]
    assert sum(same) >= 0.8 * len(german), (ours, expected)
    for i in range(len(german)):
        assert same[i] or abs(ours_scores[i] - theirs_scores[i]) < NEAR_TIE, (i, ours[i], expected[i])


def test_export_folder_is_self_contained(ct2_float32, german):
    import json

    from transformers import AutoTokenizer

    names = {path.name for path in ct2_float32.iterdir()}
    assert {"model.bin", "config.json", "shared_vocabulary.json", "source.spm", "target.spm", "vocab.json",
            "tokenizer_config.json", "tiekd_export.json"} <= names
    info = json.loads((ct2_float32 / "tiekd_export.json").read_text(encoding="utf-8"))
    assert info["quantization"] == "float32" and info["max_source_positions"] == 512
    assert len(AutoTokenizer.from_pretrained(str(ct2_float32)).get_vocab()) == 500
    assert not [p for p in ct2_float32.parent.iterdir() if p.name.startswith(".")]  # no temporary left


def test_int8_export_scores_like_float32(model_dir, ct2_float32, tmp_path, multi30k):
    """int8 weights move each token's log-probability a little. Compared on fixed reference targets
    (teacher-forced scoring), not on beam outputs: a barely trained model's search runs away into
    repetitions that one flipped near-tie changes completely, so equal translations would measure the
    search, not the quantization (a CI machine once saw 0 of 30 equal)."""
    import ctranslate2

    out = export_ctranslate2(model_dir, tmp_path / "int8")
    assert (out / "model.bin").stat().st_size < 0.6 * (ct2_float32 / "model.bin").stat().st_size  # really int8
    int8, float32 = CTranslate2Translator(out), CTranslate2Translator(ct2_float32)
    tokenizer = float32.tokenizer
    german, english = head(multi30k / "test_2016_flickr.de", 30), head(multi30k / "test_2016_flickr.en", 30)
    sources = [tokenizer.convert_ids_to_tokens(ids) for ids in tokenizer(german).input_ids]
    targets = [tokenizer.convert_ids_to_tokens(ids)[:-1] for ids in tokenizer(text_target=english).input_ids]

    def token_log_probs(engine: ctranslate2.Translator) -> torch.Tensor:
        return torch.tensor([p for result in engine.score_batch(sources, targets) for p in result.log_probs])

    quantized, exact = token_log_probs(int8.translator), token_log_probs(float32.translator)
    assert len(exact) > 300 and exact.mean() > -6.0  # the model learned something: ln(500) = 6.2 is uniform
    # measured here: per-token |difference| 0.18 nats on a 1.9-nat spread, correlation 0.990, bias -0.06
    # (a d_model-32 model is hard on int8); the bounds leave room for another machine's fixture
    assert (quantized - exact).abs().mean() < 0.25 * exact.std()
    assert abs((quantized - exact).mean()) < 0.3  # perplexity within about 35%
    assert torch.corrcoef(torch.stack([quantized, exact]))[0, 1] > 0.95
    assert len(set(int8.translate(german, max_length=30))) >= 10  # int8 still translates, source by source
    assert int8.translate([]) == []


def test_translate_cli_reads_stdin_with_either_engine(model_dir, ct2_float32, german, tmp_path, monkeypatch, capsys):
    import io
    import sys

    from tiekd.cli import main
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.inference.translate import DecodeOptions, translate_sentences
    from tiekd.models import load_model

    text = "".join(line + "\r\n" for line in german[:5]) + "".join(line + "\n" for line in german[5:])
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))  # Windows line ends in the first half
    assert main(["translate", "--model", str(ct2_float32), "--engine", "ctranslate2", "--device", "cpu",
                 "--beam", "4", "--lenpen", "0.6", "--max-length", "30"]) == 0
    expected = CTranslate2Translator(ct2_float32).translate(german, beam_size=4, length_penalty=0.6, max_length=30)
    assert capsys.readouterr().out == "".join(line + "\n" for line in expected)

    monkeypatch.setattr(sys, "stdin", io.StringIO(text))
    out = tmp_path / "out.en"
    assert main(["translate", "--model", str(model_dir), "--device", "cpu", "--greedy", "--max-length", "20",
                 "--output", str(out), "--quiet"]) == 0
    expected = translate_sentences(load_model(model_dir), load_tokenizer(model_dir), german,
                                   DecodeOptions(beam=1, max_length=20, progress=False))
    assert out.read_text(encoding="utf-8").splitlines() == expected and len(expected) == len(german)
    assert capsys.readouterr().out == ""  # the translations went to --output only

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["translate", "--model", str(ct2_float32), "--engine", "ctranslate2", "--device", "cpu"]) == 0
    assert capsys.readouterr().out == ""


def test_existing_folder_is_refused_unless_overwrite(model_dir, tmp_path):
    out = tmp_path / "ct2"
    out.mkdir()
    (out / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(TiekdError, match=r"ct2: folder exists and is not empty. Fix: pass --overwrite"):
        export_ctranslate2(model_dir, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    export_ctranslate2(model_dir, out, quantization="int8", overwrite=True)
    assert (out / "model.bin").is_file() and not (out / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]  # temporary and old folders removed
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_ctranslate2(model_dir, empty) / "model.bin").is_file()  # an empty folder is fine


def test_clear_errors(model_dir, tmp_path):
    with pytest.raises(TiekdError, match="unknown quantization 'int4'. Fix: use one of int8"):
        export_ctranslate2(model_dir, tmp_path / "out", quantization="int4")
    with pytest.raises(TiekdError, match="not a model folder"):
        export_ctranslate2(tmp_path, tmp_path / "out")
    with pytest.raises(TiekdError, match="is the model folder or contains it"):
        export_ctranslate2(model_dir, model_dir, overwrite=True)
    with pytest.raises(TiekdError, match="not a CTranslate2 folder"):
        CTranslate2Translator(model_dir)
    assert not (tmp_path / "out").exists()


def test_nonzero_start_embedding_warns(model_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    model = AutoModelForSeq2SeqLM.from_pretrained(str(model_dir))
    with torch.no_grad():
        model.get_input_embeddings().weight[model.config.pad_token_id] = 0.1
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(str(model_dir)).save_pretrained(tmp_path / "model")
    with pytest.warns(UserWarning, match="embedding is not zero"):
        export_ctranslate2(tmp_path / "model", tmp_path / "ct2", quantization="float32")


def test_cli(model_dir, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    args = parser.parse_args([str(model_dir), "--out", str(tmp_path / "ct2"), "--quantization", "int8_float32"])
    run_export(args)
    assert "ct2 (int8_float32," in capsys.readouterr().out
    assert (tmp_path / "ct2" / "model.bin").is_file()
    with pytest.raises(SystemExit):
        parser.parse_args([str(model_dir), "--out", "x", "--quantization", "int3"])
