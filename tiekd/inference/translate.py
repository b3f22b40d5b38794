"""Batched beam search and greedy decoding with a Hugging Face seq2seq model.

Sentences are decoded in batches sorted by length (less padding) and returned in input order.
Beam search scores hypotheses by sum log p / length^lenpen (the convention of fairseq, HF and
CTranslate2); the paper evaluates with beam 4 and length penalty 0.6 (docs/method.md §11).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .decode_limits import MAX_DECODE_LENGTH


@dataclass
class DecodeOptions:
    beam: int = 4
    length_penalty: float = 0.6
    max_length: int = MAX_DECODE_LENGTH  # maximum generated tokens
    # if set, a translation also stops after ceil(factor * its source's tokens) generated tokens, as with
    # Marian's --max-length-factor (default 3): an untrained model that never says </s> then decodes a
    # few dozen steps instead of max_length. Each batch decodes up to its longest source's limit and
    # each row is cut at its own, so a greedy translation does not depend on its batch; a beam search
    # cut this way can differ from one run with the shorter limit (only where the limit binds).
    max_length_factor: float | None = None
    batch_sentences: int = 64
    progress: bool | None = None  # None: a bar only for long inputs on a terminal

    def max_new_tokens(self, source_tokens: int) -> int:
        """Generated tokens allowed for a source of `source_tokens` tokens (</s> included)."""
        if self.max_length_factor is None:
            return self.max_length
        return min(self.max_length, math.ceil(self.max_length_factor * source_tokens))


def translate_sentences(model, tokenizer, sentences: list[str], options: DecodeOptions | None = None,
                        device: str | torch.device | None = None) -> list[str]:
    """Translate `sentences` (detokenized strings) and return detokenized translations in order."""
    options = options or DecodeOptions()
    ids = translate_to_ids(model, tokenizer, sentences, options, device)
    return tokenizer.batch_decode(ids, skip_special_tokens=True)


@torch.inference_mode()
def translate_to_ids(model, tokenizer, sentences: list[str], options: DecodeOptions,
                     device: str | torch.device | None = None) -> list[list[int]]:
    if not sentences:  # the tokenizer refuses an empty batch (e.g. a rank with no validation share under DDP)
        return []
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    encoded = tokenizer(sentences, add_special_tokens=True)["input_ids"]
    max_source = model.config.max_position_embeddings
    encoded = [seq[: max_source - 1] + [tokenizer.eos_token_id] if len(seq) > max_source else seq for seq in encoded]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]), reverse=True)
    results: list[list[int]] = [[] for _ in encoded]
    show = options.progress if options.progress is not None else (len(sentences) > 500 and sys.stderr.isatty())
    bar = tqdm(total=len(sentences), desc="translate", unit="sent", disable=not show)
    pad = tokenizer.pad_token_id
    forced_eos = getattr(model.generation_config, "forced_eos_token_id", None)
    forced_eos = forced_eos if isinstance(forced_eos, int) else None  # a list of ids is not forced at a cut
    for start in range(0, len(order), options.batch_sentences):
        chunk = order[start:start + options.batch_sentences]
        width = max(len(encoded[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        for row, i in enumerate(chunk):
            input_ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
        input_ids = input_ids.to(device)
        beam_options = ({"num_beams": options.beam, "length_penalty": options.length_penalty, "early_stopping": True}
                        if options.beam > 1 else {"num_beams": 1})
        output = model.generate(input_ids=input_ids, attention_mask=(input_ids != pad).long(),
                                max_new_tokens=options.max_new_tokens(width), do_sample=False, **beam_options)
        for row, i in enumerate(chunk):
            results[i] = _cut([t for t in output[row].tolist() if t != pad], options.max_new_tokens(len(encoded[i])),
                              forced_eos)
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return results


def _cut(ids: list[int], limit: int, forced_eos: int | None) -> list[int]:
    """A translation cut at `limit` tokens as decoding with that limit ends it: `generate` forces the
    model's forced_eos_token_id (Marian's </s>) as the last token when a hypothesis reaches the limit."""
    if len(ids) <= limit:
        return ids
    cut = ids[:limit]
    if forced_eos is not None:
        cut[-1] = forced_eos
    return cut


@torch.inference_mode()
def sequence_log_probs(model, tokenizer, sources: list[str], hypotheses_ids: list[list[int]]) -> list[float]:
    """Sum of log p(hypothesis | source) under teacher forcing (for checking decoders)."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    scores = []
    for source, hyp in zip(sources, hypotheses_ids):
        enc = tokenizer([source], return_tensors="pt").to(device)
        labels = torch.tensor([hyp], device=device)
        logits = model(**enc, labels=labels).logits.float()
        log_probs = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
        scores.append(float(log_probs[labels != pad].sum()))
    return scores
