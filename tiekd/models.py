"""Transformer encoder-decoders as Hugging Face Marian models.

Every model is a standard `transformers` folder (`save_pretrained`) with its tokenizer beside the
weights, so `AutoModelForSeq2SeqLM` / `AutoTokenizer` and `ct2-transformers-converter` read it.
Presets follow Vaswani et al. (2017): post-norm, sinusoidal positions, shared (tied) embeddings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .errors import TiekdError


@dataclass(frozen=True)
class ModelPreset:
    """Size of a Transformer encoder-decoder; the decoder has `decoder_layers` (default: `layers`)."""

    d_model: int
    layers: int
    heads: int
    ffn_dim: int
    dropout: float = 0.1             # on embeddings, sublayer outputs and residuals
    attention_dropout: float = 0.0   # on attention weights
    activation_dropout: float = 0.0  # inside the feed-forward block, after the ReLU
    decoder_layers: int | None = None  # None: as many as the encoder

    @property
    def encoder_layers(self) -> int:
        return self.layers

    @property
    def decoder_depth(self) -> int:
        return self.layers if self.decoder_layers is None else self.decoder_layers


# "big"/"base" are the paper's teacher/student shapes (WMT); the rest suit Multi30k and CPUs.
PRESETS: dict[str, ModelPreset] = {
    "big": ModelPreset(d_model=1024, layers=6, heads=16, ffn_dim=4096, dropout=0.3),
    "base": ModelPreset(d_model=512, layers=6, heads=8, ffn_dim=2048),
    "teacher": ModelPreset(d_model=256, layers=3, heads=4, ffn_dim=1024, dropout=0.2),
    "small": ModelPreset(d_model=256, layers=2, heads=4, ffn_dim=512),
    "tiny": ModelPreset(d_model=128, layers=2, heads=4, ffn_dim=256),
    "micro": ModelPreset(d_model=32, layers=1, heads=2, ffn_dim=64, dropout=0.0),
    # the capacity-gap students: tiny's depth with its width halved and cut to 3/16, so that the
    # teacher-student gap widens by width alone (9.5% and 3.2% of the 7.84M converged teacher's
    # parameters with its 8k vocabulary, against tiny's 23%; preset `capacity`)
    "mini": ModelPreset(d_model=64, layers=2, heads=2, ffn_dim=128),
    "nano": ModelPreset(d_model=24, layers=2, heads=2, ffn_dim=48),
    # production CPU students: a deep encoder (it runs once per sentence) and a shallow decoder (it runs
    # once per generated token), tied embeddings; the shapes of Bergamot / Firefox Translations'
    # "base" and "tiny" students (Bogoychev et al. 2020, Kim et al. 2019), with standard attention
    # in the decoder where those use an SSRU
    "deep-shallow-base": ModelPreset(d_model=512, layers=6, heads=8, ffn_dim=2048, decoder_layers=2),
    "deep-shallow-tiny": ModelPreset(d_model=256, layers=6, heads=8, ffn_dim=1536, decoder_layers=2),
    # the same idea at Multi30k size. "tiny-deep-shallow" moves one of tiny's decoder layers into two
    # encoder layers (4 + 1 layers, 1.88M parameters against tiny's 1.82M with an 8k vocabulary), so the
    # two compare at an equal parameter count. Caution: with seed 1 (lr 1e-3 or 2e-3) it stayed on the
    # early plateau for 1,000-1,600 updates, seed 2 left it by update 600; trained, it decoded 1.1-1.3x
    # faster than tiny and scored 1.7 BLEU lower (docs/RESULTS.md, "Deep encoder, shallow decoder").
    # "teacher-deep-shallow" has the teacher's width, FFN and encoder depth and one decoder layer, so
    # --init-from-teacher can copy the whole encoder into it.
    "tiny-deep-shallow": ModelPreset(d_model=128, layers=4, heads=4, ffn_dim=256, decoder_layers=1),
    "teacher-deep-shallow": ModelPreset(d_model=256, layers=3, heads=4, ffn_dim=1024, decoder_layers=1),
}


DROPOUT_FIELDS = ("dropout", "attention_dropout", "activation_dropout")


def build_model(preset: str | ModelPreset, tokenizer, max_positions: int = 512, **dropouts: float | None):
    """A freshly initialised Marian model of `preset` for `tokenizer`'s vocabulary.

    `dropouts` (dropout, attention_dropout, activation_dropout) override the preset's where not None.
    They must reach the model's config before its layers are built: Hugging Face layers copy the rates
    into plain float attributes at construction and apply them with `nn.functional.dropout`, so
    changing `config.dropout` afterwards does nothing."""
    from transformers import MarianConfig, MarianMTModel

    if isinstance(preset, str):
        if preset not in PRESETS:
            raise TiekdError(f"unknown model preset {preset!r}. Fix: use one of {', '.join(PRESETS)}")
        preset = PRESETS[preset]
    preset = replace(preset, **_checked_dropouts(dropouts))
    vocab = tokenizer.get_vocab()
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    config = MarianConfig(
        vocab_size=len(vocab), d_model=preset.d_model,
        encoder_layers=preset.encoder_layers, decoder_layers=preset.decoder_depth,
        encoder_attention_heads=preset.heads, decoder_attention_heads=preset.heads,
        encoder_ffn_dim=preset.ffn_dim, decoder_ffn_dim=preset.ffn_dim,
        dropout=preset.dropout, attention_dropout=preset.attention_dropout,
        activation_dropout=preset.activation_dropout,
        activation_function="relu", max_position_embeddings=max_positions,
        pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id, forced_eos_token_id=eos_id,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True, scale_embedding=True,
        tiekd_preset=asdict(preset),
    )
    model = MarianMTModel(config)
    _set_generation_defaults(model, pad_id)
    with torch.no_grad():
        model.get_input_embeddings().weight[pad_id].zero_()
    return model


def _set_generation_defaults(model, pad_id: int) -> None:
    # beam 4 and length penalty 0.6 are the paper's evaluation settings (docs/method.md §11); <pad> is the
    # decoder's start symbol and must never be generated (CTranslate2 drops it from the vocabulary).
    generation = model.generation_config
    generation.num_beams = 4
    generation.length_penalty = 0.6
    generation.bad_words_ids = [[pad_id]]
    generation.early_stopping = True


def keep_pad_embedding_zero(model) -> None:
    """Zero the gradient of the `<pad>` row of the shared embedding.

    The row starts at zero; with tied output weights the softmax would otherwise train it. Keeping it
    zero makes the decoder's start state equal CTranslate2's zero start embedding for Marian models.
    """
    pad_id = model.config.pad_token_id
    weight = model.get_input_embeddings().weight

    def zero_pad_row(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[pad_id] = 0
        return grad

    weight.register_hook(zero_pad_row)


def zero_pad_row_grad(model) -> None:
    """Zero the `<pad>` row of the shared embedding's accumulated gradient, in place.

    The trainer's form of `keep_pad_embedding_zero`: called once per update before clipping, it also
    works under FSDP2, where the gradient is a DTensor sharded by rows (rank r holds the r-th chunk of
    ceil(V / N) rows, torch.chunk's split) and a hook on the original parameter would never fire.
    """
    grad = model.get_input_embeddings().weight.grad
    if grad is None:
        return
    pad_id = model.config.pad_token_id
    if hasattr(grad, "to_local"):  # DTensor
        local = grad.to_local()
        rows_per_rank = -(-grad.shape[0] // grad.device_mesh.size())
        start = grad.device_mesh.get_local_rank() * rows_per_rank
        if start <= pad_id < start + local.shape[0]:
            local[pad_id - start] = 0
    else:
        grad[pad_id] = 0


def check_model_folder(path: str | Path) -> Path:
    """`path` as a Path, or a clear error when it holds no model (no config.json)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise TiekdError(
            f"{path}: not a model folder (no config.json). Fix: pass a folder written by `tiekd train`, "
            "`tiekd distill` or `tiekd average`, or any Hugging Face seq2seq model folder"
        )
    return path


def _checked_dropouts(dropouts: dict) -> dict:
    unknown = set(dropouts) - set(DROPOUT_FIELDS)
    if unknown:
        raise TypeError(f"unknown dropout option(s) {sorted(unknown)}")
    chosen = {name: float(value) for name, value in dropouts.items() if value is not None}
    bad = [f"{name} {value}" for name, value in chosen.items() if not 0.0 <= value < 1.0]
    if bad:
        raise TiekdError(f"{', '.join(bad)}: a dropout rate must lie in [0, 1). Fix: pass e.g. 0.1")
    return chosen


def load_model(path: str | Path, device: str | torch.device = "cpu", **dropouts: float | None):
    """Load a seq2seq model folder with a clear error when it is not one.

    `dropouts` (as in `build_model`) replace the folder's rates where not None; they go through
    `from_pretrained`'s config overrides so that the layers are built with them."""
    from transformers import AutoModelForSeq2SeqLM

    path = check_model_folder(path)
    overrides = _checked_dropouts(dropouts)
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(path), **overrides)
    except Exception as exc:
        raise TiekdError(f"{path}: could not load the model ({type(exc).__name__}: {exc}). "
                         "Fix: check that the folder is complete (config.json and model weights)") from exc
    return model.to(device)


def parameter_count(model) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def describe_presets(tokenizer) -> list[tuple[str, int, ModelPreset]]:
    """(name, parameter count, preset) for every preset at `tokenizer`'s vocabulary size."""
    rows = []
    for name, preset in PRESETS.items():
        with torch.device("meta"):
            model = build_model(preset, tokenizer)
        rows.append((name, parameter_count(model), preset))
    return rows


def evenly_spaced_layers(student_layers: int, teacher_layers: int) -> list[int]:
    """Which teacher layers a shallower student copies: evenly spaced, always the first and the last
    (the choice of Hugging Face's distillation `make_student`, e.g. 6 -> 2: [0, 5]; 6 -> 3: [0, 2, 5])."""
    if student_layers > teacher_layers:
        raise TiekdError(f"the student has {student_layers} layers, more than the teacher's {teacher_layers}. "
                         "Fix: initialise only students with at most as many layers as the teacher")
    if student_layers == 1:
        return [0]
    return [round(i * (teacher_layers - 1) / (student_layers - 1)) for i in range(student_layers)]


def init_from_teacher(student, teacher) -> dict:
    """Copy the teacher's shared embeddings and an evenly spaced subset of its encoder and decoder layers
    into `student` (in place), the idea behind Hugging Face's `make_student` and DistilBERT's
    initialisation. Needs the same vocabulary, d_model and feed-forward size. Returns which teacher
    layers were copied: {"encoder": [...], "decoder": [...]}."""
    s, t = student.config, teacher.config
    mismatched = [f"{name} {getattr(s, name)} vs {getattr(t, name)}"
                  for name in ("vocab_size", "d_model", "encoder_ffn_dim", "decoder_ffn_dim")
                  if getattr(s, name) != getattr(t, name)]
    if mismatched:
        raise TiekdError(f"the student cannot be initialised from the teacher: student vs teacher "
                         f"{', '.join(mismatched)}. Fix: pick a student preset with the teacher's vocabulary, "
                         "d_model and FFN size and fewer layers, or train without --init-from-teacher")
    copied = {}
    with torch.no_grad():
        student.get_input_embeddings().weight.copy_(teacher.get_input_embeddings().weight)
        student.final_logits_bias.copy_(teacher.final_logits_bias)
        for side in ("encoder", "decoder"):
            student_layers = getattr(student.model, side).layers
            teacher_layers = getattr(teacher.model, side).layers
            chosen = evenly_spaced_layers(len(student_layers), len(teacher_layers))
            for target, index in zip(student_layers, chosen):
                target.load_state_dict(teacher_layers[index].state_dict())
            copied[side] = chosen
    return copied
