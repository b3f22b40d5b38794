"""tiekd: knowledge distillation for neural machine translation.

Implements word-level KD (Hinton et al. 2015; Kim & Rush 2016), sequence-level KD (Kim & Rush 2016),
Selective-KD (Wang et al. 2021) and TIE-KD (Zhang et al., "Towards Understanding and Improving
Knowledge Distillation for Neural Machine Translation", ACL 2023) over Hugging Face Marian models.
"""

__version__ = "0.1.0"
