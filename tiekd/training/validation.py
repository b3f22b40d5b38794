"""Validation during training: loss, perplexity and greedy BLEU on the validation split.

Each rank scores every world_size-th batch and decodes every world_size-th sentence; the sums are
all-reduced and the translations gathered, so the numbers do not depend on the number of processes
(up to float summation order). `loss` is the training criterion (label-smoothed CE per target token),
`nll` the plain CE per token and `ppl = exp(nll)`; BLEU is sacrebleu's corpus BLEU of greedy (or
`valid_beam`) translations of the first `valid_max_sentences` sentences, each at most 3x its source's
length in tokens.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..config import RunConfig
from ..data import batching
from ..data.binarized import load_corpus
from ..inference.decode_limits import MAX_DECODE_LENGTH
from ..inference.translate import DecodeOptions, translate_sentences
from ..io import read_lines
from ..kd.losses import label_smoothed_ce
from ..kd.objectives import shift_right
from .devices import autocast_context
from .distributed import DistInfo, all_reduce_sum, gather_objects
from .state import TrainingState

# validation stops a translation after 3x its source's tokens (Marian's default --max-length-factor):
# early in training, when no hypothesis ends, this bounds a validation's decoding near the data's length
VALID_MAX_LENGTH_FACTOR = 3.0


class Validator:
    """The validation split, encoded once, and how a model is scored on it."""

    def __init__(self, tokenizer, source_path: Path, target_path: Path, config: RunConfig, dist: DistInfo,
                 device: torch.device, max_positions: int, prepared=None):
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id
        self.config = config
        self.dist = dist
        self.device = device
        self.sources = read_lines(source_path)
        self.references = read_lines(target_path)
        self.corpus = load_corpus(prepared, (source_path, target_path), tokenizer, max_positions)

    @torch.no_grad()
    def run(self, model, state: TrainingState) -> dict:
        """The "valid" record of metrics.jsonl for `model` (an unsharded model, put back in training
        mode afterwards) at the progress of `state`."""
        config = self.config
        model.eval()
        sums = torch.zeros(3, device=self.device)  # label-smoothed CE sum, NLL sum, target tokens
        for k, ids in enumerate(batching.make_batches(self.corpus, config.max_tokens)):
            if k % self.dist.world_size != self.dist.rank:
                continue
            batch = batching.collate(self.corpus, ids).to(self.device)
            with autocast_context(self.device, config.precision):
                logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                               decoder_input_ids=shift_right(batch.labels, model.config.decoder_start_token_id),
                               use_cache=False).logits
            sums[0] += label_smoothed_ce(logits, batch.labels, self.pad_id, epsilon=config.label_smoothing).float()
            sums[1] += label_smoothed_ce(logits, batch.labels, self.pad_id, epsilon=0.0).float()
            sums[2] += batch.num_target_tokens
        sums = all_reduce_sum(sums, self.dist)
        record = {"kind": "valid", "step": state.step, "epochs_completed": state.epoch,
                  "loss": float(sums[0] / sums[2]), "nll": float(sums[1] / sums[2]), **state.compute_spent()}
        record["ppl"] = math.exp(min(record["nll"], 50))  # capped: an untrained model's exp would overflow
        if config.valid_bleu:
            record["bleu"] = self._bleu(model)
        model.train()
        return record

    def _bleu(self, model) -> float:
        import sacrebleu

        config = self.config
        count = config.valid_max_sentences or len(self.sources)
        indices = list(range(min(count, len(self.sources))))
        mine = indices[self.dist.rank::self.dist.world_size]
        options = DecodeOptions(beam=config.valid_beam, progress=False, max_length=MAX_DECODE_LENGTH,
                                max_length_factor=VALID_MAX_LENGTH_FACTOR)
        hyps = translate_sentences(model, self.tokenizer, [self.sources[i] for i in mine], options)
        pairs = sorted(gather_objects(list(zip(mine, hyps)), self.dist))  # (sentence index, translation)
        references = [self.references[i] for i, _ in pairs]
        return sacrebleu.corpus_bleu([h for _, h in pairs], [references]).score
