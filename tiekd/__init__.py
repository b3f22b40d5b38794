"""tiekd: knowledge distillation for neural machine translation.

Implements word-level KD (Hinton et al. 2015; Kim & Rush 2016), sequence-level KD (Kim & Rush 2016),
Selective-KD (Wang et al. 2021) and TIE-KD (Zhang et al., "Towards Understanding and Improving
Knowledge Distillation for Neural Machine Translation", ACL 2023) over Hugging Face Marian models.

From your own training code (the names load on first use, so `import tiekd` and `tiekd --help` stay
free of torch):

    import tiekd
    objective = tiekd.DistillationObjective.for_method("tie-kd", student, teacher, topk=5)
    loss, parts = objective.mean_loss(batch["input_ids"], batch["attention_mask"], batch["labels"])

`tiekd.METHODS` lists every method with a one-line description; `tiekd.KD_SETTINGS` the settings they take.
"""

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DistillationObjective": "kd.objectives",
    "KD_SETTINGS": "kd.objectives",
    "check_same_vocabulary": "kd.objectives",
    "METHODS": "kd.methods",
    "TiekdError": "errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'tiekd' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
