"""Model presets and the dropout overrides: the rates must reach the layers, which copy them when built."""

from __future__ import annotations

import pytest
import torch

from conftest import small_config

RATES = ("dropout", "attention_dropout", "activation_dropout")


@pytest.fixture(scope="module")
def tokenizer(prepared):
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    return load_tokenizer(load_prepared(prepared).tokenizer_dir)


def layer_rates(model) -> dict[str, set[float]]:
    """The rates the layers apply (Hugging Face's Marian layers hold them as plain floats)."""
    encoder, decoder = model.model.encoder, model.model.decoder
    layers = [*encoder.layers, *decoder.layers]
    attentions = [layer.self_attn for layer in layers] + [layer.encoder_attn for layer in decoder.layers]
    return {"dropout": {encoder.dropout, decoder.dropout, *(layer.dropout for layer in layers)},
            "attention_dropout": {attention.dropout for attention in attentions},
            "activation_dropout": {layer.activation_dropout for layer in layers}}


def assert_rates(model, dropout, attention_dropout, activation_dropout):
    expected = {"dropout": dropout, "attention_dropout": attention_dropout, "activation_dropout": activation_dropout}
    assert layer_rates(model) == {name: {value} for name, value in expected.items()}
    assert {name: getattr(model.config, name) for name in RATES} == expected  # and saved with the model


def test_presets_and_overrides_reach_every_layer(tokenizer):
    from tiekd.errors import TiekdError
    from tiekd.models import PRESETS, build_model

    tiny = PRESETS["tiny"]
    with torch.device("meta"):  # the layers' shapes and rates, without initialising weights
        assert_rates(build_model("tiny", tokenizer), tiny.dropout, tiny.attention_dropout, tiny.activation_dropout)
        assert_rates(build_model("tiny", tokenizer, dropout=0.3, attention_dropout=0.2, activation_dropout=0.1),
                     0.3, 0.2, 0.1)
        # None keeps the preset's rate
        assert_rates(build_model("tiny", tokenizer, dropout=0.0, attention_dropout=None), 0.0, tiny.attention_dropout,
                     tiny.activation_dropout)
    with pytest.raises(TiekdError, match="must lie in"):
        build_model("micro", tokenizer, dropout=1.0)


@pytest.mark.parametrize("rates", [{}, {"dropout": 0.3}, {"attention_dropout": 0.3}, {"activation_dropout": 0.3}],
                         ids=["none", "dropout", "attention", "activation"])
def test_training_mode_differs_from_eval_mode_only_with_dropout(tokenizer, rates):
    from tiekd.models import build_model

    torch.manual_seed(0)
    model = build_model("micro", tokenizer, **{**{name: 0.0 for name in RATES}, **rates})
    batch = tokenizer(["Ein Mann fährt Fahrrad.", "Zwei Hunde spielen im Schnee."], text_target=[
        "A man rides a bike.", "Two dogs play in the snow."], return_tensors="pt", padding=True)
    with torch.no_grad():
        evaluated = model.eval()(**batch).logits
        trained = [model.train()(**batch).logits for _ in range(2)]
    if rates:
        assert not torch.allclose(trained[0], evaluated) and not torch.allclose(trained[0], trained[1])
    else:
        assert torch.allclose(trained[0], evaluated, rtol=0, atol=1e-6)


def test_a_model_folder_loads_with_its_own_rates_or_overrides(tokenizer, tmp_path):
    import json

    from tiekd.models import build_model, load_model

    build_model("micro", tokenizer, dropout=0.3, activation_dropout=0.1).save_pretrained(tmp_path / "model")
    saved = (tmp_path / "model" / "config.json").read_text()
    assert_rates(load_model(tmp_path / "model"), 0.3, 0.0, 0.1)
    assert_rates(load_model(tmp_path / "model", dropout=0.0, attention_dropout=0.2), 0.0, 0.2, 0.1)
    assert (tmp_path / "model" / "config.json").read_text() == saved  # the folder itself is not changed
    assert json.loads(saved)["dropout"] == 0.3


def test_run_config_dropouts_reach_the_trained_student(prepared, tmp_path):
    from tiekd.cli import _run_config_from_args, build_parser
    from tiekd.data import batching
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.models import build_model, load_model
    from tiekd.training.trainer import Trainer

    flags = ["--dropout", "0.25", "--attention-dropout", "0.15", "--activation-dropout", "0.05"]
    args = build_parser().parse_args(["train", "--data", str(prepared), "--out", str(tmp_path / "x"), *flags])
    config = _run_config_from_args(args)
    assert (config.dropout, config.attention_dropout, config.activation_dropout) == (0.25, 0.15, 0.05)

    # a preset student, and a model folder as student, each with overrides
    trainer = Trainer(small_config(prepared, tmp_path / "preset", dropout=0.25, attention_dropout=0.15,
                                   activation_dropout=0.05, valid_bleu=False), quiet=True)
    assert_rates(trainer.student, 0.25, 0.15, 0.05)
    assert trainer.student.training
    # the objective really trains with dropout: two forward passes on one batch differ
    batch = batching.collate(trainer.train_corpus, trainer.batches[0])
    with torch.no_grad():
        losses = [trainer.objective(batch.input_ids, batch.attention_mask, batch.labels)[0] for _ in range(2)]
    assert not torch.allclose(losses[0], losses[1])

    folder = tmp_path / "student"
    tokenizer = load_tokenizer(load_prepared(prepared).tokenizer_dir)
    build_model("micro", tokenizer, dropout=0.1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    trainer = Trainer(small_config(prepared, tmp_path / "folder", model=str(folder), attention_dropout=0.2,
                                   valid_bleu=False), quiet=True)
    assert_rates(trainer.student, 0.1, 0.2, 0.0)
    assert_rates(load_model(folder), 0.1, 0.0, 0.0)
