"""Students started from their teacher (--init-from-teacher) and the deep-encoder/shallow-decoder presets."""

from __future__ import annotations

import pytest
import torch

from conftest import small_config
from tiekd.errors import TiekdError
from tiekd.models import PRESETS, ModelPreset, build_model, evenly_spaced_layers, init_from_teacher


def test_evenly_spaced_layers_keep_the_first_and_the_last():
    assert evenly_spaced_layers(2, 6) == [0, 5]
    assert evenly_spaced_layers(3, 6) == [0, 2, 5]  # round(2.5) = 2
    assert evenly_spaced_layers(1, 6) == [0]
    assert evenly_spaced_layers(4, 4) == [0, 1, 2, 3]
    with pytest.raises(TiekdError, match="more than the teacher"):
        evenly_spaced_layers(5, 4)


def test_student_copies_embeddings_and_the_chosen_layers(prepared):
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(load_prepared(prepared).tokenizer_dir)
    torch.manual_seed(0)
    teacher = build_model(ModelPreset(d_model=32, layers=4, heads=2, ffn_dim=64), tokenizer)
    student = build_model(ModelPreset(d_model=32, layers=2, heads=2, ffn_dim=64, decoder_layers=1), tokenizer)
    copied = init_from_teacher(student, teacher)
    assert copied == {"encoder": [0, 3], "decoder": [0]}
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)
    assert student.get_output_embeddings().weight.data_ptr() == student.get_input_embeddings().weight.data_ptr()
    for mine, theirs in ((student.model.encoder.layers[1], teacher.model.encoder.layers[3]),
                         (student.model.decoder.layers[0], teacher.model.decoder.layers[0])):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name
    # a shape that cannot be copied is refused, naming what differs
    wide = build_model(ModelPreset(d_model=64, layers=1, heads=2, ffn_dim=64), tokenizer)
    with pytest.raises(TiekdError, match="d_model 64 vs 32"):
        init_from_teacher(wide, teacher)


def test_distill_with_init_from_teacher_starts_from_the_teachers_weights(prepared, teacher_dir, tmp_path):
    from tiekd.models import load_model
    from tiekd.training.trainer import Trainer

    config = small_config(prepared, tmp_path / "run", model="tiny", method="word-kd", teacher=str(teacher_dir),
                          init_from_teacher=True, max_updates=1)
    trainer = Trainer(config, quiet=True)
    teacher = load_model(teacher_dir)
    assert torch.equal(trainer.student.get_input_embeddings().weight.cpu(), teacher.get_input_embeddings().weight)
    with pytest.raises(TiekdError, match="cannot be initialised"):
        Trainer(small_config(prepared, tmp_path / "run2", model="micro", method="word-kd", teacher=str(teacher_dir),
                             init_from_teacher=True, max_updates=1), quiet=True)


def test_deep_shallow_presets_have_a_shallow_decoder(prepared):
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer
    from tiekd.models import parameter_count

    tokenizer = load_tokenizer(load_prepared(prepared).tokenizer_dir)
    for name in ("deep-shallow-base", "deep-shallow-tiny"):
        with torch.device("meta"):
            model = build_model(name, tokenizer)
        assert model.config.encoder_layers == 6 and model.config.decoder_layers == 2
        assert model.config.tie_word_embeddings and parameter_count(model) > 0
    assert PRESETS["tiny"].decoder_depth == PRESETS["tiny"].encoder_layers == 2


class EightThousandWordVocabulary:
    """Just enough of a tokenizer for build_model: the converged preset's 8k joint vocabulary."""

    pad_token_id, eos_token_id = 0, 1

    def get_vocab(self):
        return {f"w{i}": i for i in range(8000)}


def test_tiny_deep_shallow_has_tinys_parameter_count_with_an_8k_vocabulary():
    from tiekd.models import parameter_count

    with torch.device("meta"):
        tiny = build_model("tiny", EightThousandWordVocabulary())
        deep_shallow = build_model("tiny-deep-shallow", EightThousandWordVocabulary())
    assert deep_shallow.config.decoder_layers == 1 < deep_shallow.config.encoder_layers
    # equal size within 5%, so that BLEU and speed compare at one parameter count
    assert abs(parameter_count(deep_shallow) / parameter_count(tiny) - 1) < 0.05


def test_teacher_deep_shallow_can_start_from_the_teacher_preset(prepared):
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(load_prepared(prepared).tokenizer_dir)
    torch.manual_seed(0)
    teacher, student = build_model("teacher", tokenizer), build_model("teacher-deep-shallow", tokenizer)
    assert init_from_teacher(student, teacher) == {"encoder": [0, 1, 2], "decoder": [0]}
