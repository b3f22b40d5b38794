"""The knowledge-distillation core: what a student learns from its teacher.

- `losses/`: the per-token losses (label-smoothed CE, word-level KD, the paper's analysis variants,
  TIE-KD's ranking terms, Selective-KD's token mask, other divergences), each tested against a naive
  version; docs/method.md gives their math.
- `methods.py`: the registry of methods (`METHODS`): for each name, its KD loss, passes and token mask.
- `objectives.py`: `DistillationObjective`, a student's whole loss for one batch as one module (the object
  `tiekd distill`, tiekd.hf's trainer and your own loop all train with).
"""
