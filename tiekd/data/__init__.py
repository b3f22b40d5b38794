"""Data: reading and validating parallel text, Multi30k, and the `prepare` job; the joint SentencePiece
tokenizer, encoding and token-count batches; and the teacher's translations that sequence-level KD
trains on (`distilled_data`)."""

from .prepare import PreparedData, add_prepare_arguments, load_prepared, prepare_data, run_prepare

__all__ = ["PreparedData", "add_prepare_arguments", "load_prepared", "prepare_data", "run_prepare"]
