"""Evaluation: `evaluate` scores translations against references (sacreBLEU's BLEU and chrF with their
signatures, and paired tests between two systems: `tiekd evaluate`); `agreement` measures a student
against its teacher, teacher-forced on the gold target (top-1 agreement and teacher-gold overlap,
docs/method.md §10: `tiekd analyze`)."""
