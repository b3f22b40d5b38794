"""Length limits shared by everything that decodes, kept apart from tiekd.inference.translate so that reading
them (the command line's defaults) does not import torch."""

# generated tokens at most, everywhere tiekd decodes (translate, validation, sequence-KD targets, export);
# Multi30k targets are < 100 tokens, WMT-style ones rarely over 200
MAX_DECODE_LENGTH = 256
