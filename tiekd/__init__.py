"""tiekd: knowledge distillation for neural machine translation.

Implements word-level KD (Hinton et al. 2015; Kim & Rush 2016), sequence-level KD (Kim & Rush 2016),
Selective-KD (Wang et al. 2021) and TIE-KD (Zhang et al., "Towards Understanding and Improving
Knowledge Distillation for Neural Machine Translation", ACL 2023) over Hugging Face Marian models.
"""

__version__ = "0.1.0"


def _quiet_transformers() -> None:
    """Silence per-save progress bars and advisory warnings that would bury our own progress output."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # transformers is a dependency; this only guards odd installs
        pass


_quiet_transformers()
