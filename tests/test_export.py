"""CTranslate2 export: a briefly trained micro model translates exactly as Hugging Face's generate."""

from __future__ import annotations

import argparse

import pytest
import torch

from tiekd.errors import TiekdError
from tiekd.export import CTranslate2Translator, add_export_arguments, export_ctranslate2, run_export

from conftest import head


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, multi30k):
    """A micro model trained 200 steps on 2,000 real pairs: junk translations, but ones that depend on
    the source, so matching outputs mean something."""
    from transformers import AutoTokenizer

    from tiekd.models import build_model, keep_pad_embedding_zero
    from tiekd.tokenizer import train_joint_sentencepiece

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


def hf_translate(hf_model, sentences, num_beams=1, max_new_tokens=20, **kwargs) -> list[str]:
    model, tokenizer = hf_model
    batch = tokenizer(sentences, return_tensors="pt", padding=True)
    beam = {"length_penalty": 0.6, "early_stopping": True} if num_beams > 1 else {}
    with torch.no_grad():
        output = model.generate(**batch, num_beams=num_beams, do_sample=False, max_new_tokens=max_new_tokens,
                                **beam, **kwargs)
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def test_greedy_translations_match_huggingface(hf_model, ct2_float32, german):
    # forced_eos_token_id=None: generate would otherwise turn the 20th token into </s>, which
    # CTranslate2 never does (see the next test)
    expected = hf_translate(hf_model, german, max_new_tokens=20, forced_eos_token_id=None)
    assert len(set(expected)) >= 5, expected  # source-dependent output, not one repeated string
    translator = CTranslate2Translator(ct2_float32)
    assert translator.translate(german, beam_size=1, max_length=20) == expected


def test_forced_eos_equals_one_token_less(hf_model, ct2_float32, german):
    """generate's forced </s> at max_new_tokens = CTranslate2 stopping one token earlier."""
    expected = hf_translate(hf_model, german, max_new_tokens=20)  # the model's forced_eos_token_id
    translator = CTranslate2Translator(ct2_float32)
    assert translator.translate(german, beam_size=1, max_length=19) == expected
    assert translator.translate(german, beam_size=1, max_length=20) != expected


def test_beam_search_matches_huggingface(hf_model, ct2_float32, german):
    # same length-penalty convention (score / length**0.6); min_length 0 allows empty outputs as generate does
    expected = hf_translate(hf_model, german, num_beams=4, max_new_tokens=60, forced_eos_token_id=None)
    translator = CTranslate2Translator(ct2_float32)
    assert translator.translate(german, beam_size=4, length_penalty=0.6, max_length=60, batch_size=3) == expected


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


def test_int8_export_translates(model_dir, tmp_path, german):
    out = export_ctranslate2(model_dir, tmp_path / "int8")
    translations = CTranslate2Translator(out).translate(german, max_length=30)
    assert len(translations) == len(german) and all(isinstance(t, str) for t in translations)
    assert sum(bool(t) for t in translations) >= 5
    assert CTranslate2Translator(out).translate([]) == []


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
