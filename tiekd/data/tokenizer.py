"""Joint SentencePiece vocabulary packaged as a Hugging Face Marian tokenizer.

Layout (the Opus-MT/Marian convention, which CTranslate2's Marian converter expects):
`</s>` = 0, `<unk>` = 1, then the SentencePiece pieces, and `<pad>` = the last id (V - 1). The decoder
starts from `<pad>`; its embedding row is kept at zero (see `tiekd.models`) so that CTranslate2, which
starts Marian decoders from a zero embedding and drops `<pad>` from the vocabulary, decodes identically.
A tokenizer that tiekd trains uses one SentencePiece model for source and target (shared embeddings
need one vocabulary). An existing model's tokenizer (OPUS-MT: a source.spm and a target.spm over one
shared vocab.json) is kept as it is (`copy_existing_tokenizer`); targets are then encoded with the
target model (`text_target=`), which the joint tokenizers do too, so one code path serves both.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from pathlib import Path

from ..errors import TiekdError

# MarianTokenizer suggests sacremoses for punctuation normalisation; we deliberately do without it so
# that the tokenizer behaves the same wherever the model folder is loaded.
warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")

EOS, UNK, PAD = "</s>", "<unk>", "<pad>"
TOKENIZER_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json")


def train_joint_sentencepiece(
    text_files: list[Path], out_dir: Path, vocab_size: int = 8000, model_type: str = "unigram",
    max_sentences: int = 2_000_000, seed: int = 1,
) -> Path:
    """Train one SentencePiece model on the concatenation of `text_files` and write a Marian tokenizer
    folder to `out_dir`. `vocab_size` counts every id, `<pad>` included. Returns `out_dir`."""
    import sentencepiece as spm

    if vocab_size < 64:
        raise TiekdError(f"vocab_size {vocab_size} is too small. Fix: use at least 64 (8000 suits Multi30k)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        joint = Path(text_files[0]) if len(text_files) == 1 else Path(tmp) / "joint.txt"
        if len(text_files) > 1:  # SentencePiece reads one file
            with joint.open("w", encoding="utf-8") as sink:
                for path in text_files:
                    with open(path, encoding="utf-8") as source:
                        shutil.copyfileobj(source, sink)
        prefix = Path(tmp) / "spm"
        spm.set_random_generator_seed(seed)  # sentence sampling is random: fix it for reproducible vocabularies
        spm.SentencePieceTrainer.train(
            input=str(joint), model_prefix=str(prefix), vocab_size=vocab_size - 1, model_type=model_type,
            character_coverage=1.0, eos_id=0, unk_id=1, bos_id=-1, pad_id=-1,
            input_sentence_size=max_sentences, shuffle_input_sentence=True,
            num_threads=2, minloglevel=2,
        )
        write_marian_tokenizer(prefix.with_suffix(".model"), out_dir)
    return out_dir


def write_marian_tokenizer(spm_model: Path, out_dir: Path) -> None:
    """Write `source.spm`, `target.spm`, `vocab.json` and the tokenizer config for one SentencePiece model."""
    import sentencepiece as spm
    from transformers import MarianTokenizer

    processor = spm.SentencePieceProcessor(model_file=str(spm_model))
    vocab = {processor.id_to_piece(i): i for i in range(processor.get_piece_size())}
    vocab[PAD] = len(vocab)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(spm_model, Path(tmp) / "source.spm")
        shutil.copy(spm_model, Path(tmp) / "target.spm")
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        tokenizer = MarianTokenizer(str(Path(tmp) / "source.spm"), str(Path(tmp) / "target.spm"), str(Path(tmp) / "vocab.json"))
        tokenizer.save_pretrained(out_dir)


def load_tokenizer(path: str | Path):
    """Load a tokenizer from a tokenizer or model folder, with a clear error when it is not one.

    AutoTokenizer is imported only for other layouts: its import builds transformers' whole registry of
    model configs (2-2.5 s here, measured inside `tiekd prepare`'s encoding phase), which a Marian
    folder does not need."""
    path = Path(path)
    if not path.is_dir():
        raise TiekdError(f"{path}: no such folder. Fix: pass a prepared-data tokenizer folder or a model folder")
    try:
        if _marian_layout(path):  # the class AutoTokenizer would pick, without its config machinery (and torch)
            from transformers import MarianTokenizer

            return MarianTokenizer.from_pretrained(str(path))
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # transformers raises many kinds here
        raise TiekdError(
            f"{path}: not a tokenizer folder ({type(exc).__name__}: {exc}). "
            "Fix: pass a folder written by `tiekd prepare` (its tokenizer/) or by `save_pretrained`"
        ) from exc


def _marian_layout(path: Path) -> bool:
    """Whether `path` holds a Marian tokenizer: its SentencePiece models and vocabulary, and a config that
    names MarianTokenizer or none."""
    if not all((path / name).is_file() for name in ("source.spm", "target.spm", "vocab.json")):
        return False
    config = path / "tokenizer_config.json"
    try:
        named = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") if config.is_file() else None
    except (ValueError, OSError):
        return False
    return named in (None, "MarianTokenizer")


def vocab_fingerprint(tokenizer) -> tuple[int, str]:
    """(size, SHA-256 prefix) of the token->id map: two tokenizers with equal fingerprints share a
    vocabulary. Stable across processes (Python's own hash() of strings is salted per process), so it
    can be written into meta files."""
    import hashlib

    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items()), ensure_ascii=False).encode("utf-8")).hexdigest()
    return len(vocab), digest[:16]


def copy_existing_tokenizer(source: str | Path, out_dir: Path):
    """Save the Marian tokenizer of `source` (a model folder or a tokenizer folder, e.g. an OPUS-MT model
    with its own source.spm, target.spm and vocab.json) into `out_dir`, unchanged; return it loaded.

    Sources are then encoded with source.spm and targets with target.spm, both mapped through the one
    vocab.json, in that model's own id order, as the model was trained."""
    source = Path(source)
    tokenizer = load_tokenizer(source)
    missing = [name for name in TOKENIZER_FILES[:3] if not (source / name).is_file()]
    if missing or not hasattr(tokenizer, "spm_target"):
        raise TiekdError(
            f"{source}: not a Marian tokenizer folder ({type(tokenizer).__name__}"
            + (f"; missing {', '.join(missing)}" if missing else "") + "). Fix: pass a Marian/OPUS-MT model "
            "folder or its tokenizer folder (source.spm, target.spm, vocab.json), or leave out --tokenizer "
            "to train a new one")
    for name, token in (("pad", tokenizer.pad_token_id), ("eos", tokenizer.eos_token_id)):
        if token is None:
            raise TiekdError(f"{source}: the tokenizer defines no {name} token. Fix: use a complete Marian tokenizer")
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    return load_tokenizer(out_dir)
