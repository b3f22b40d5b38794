"""The real training batches that the step benchmarks time (bench_train_step.py, bench_malloc.py).

Both take the same batches, so that their figures are about the same work: the prepared training split,
tokenized as training tokenizes it, cut into batches of at most `max_tokens` tokens, shuffled with a
fixed seed (0) and the first `count` of them collated. A fixed seed keeps one run's objectives, and a
rerun's, on identical inputs.
"""

from __future__ import annotations


def sample_real_batches(data: str, max_tokens: int, count: int, with_corpus: bool = False):
    """Return (tokenizer, batches): the prepared data's tokenizer and up to `count` collated training
    batches of at most `max_tokens` tokens, in a shuffled order that depends only on the data; with
    `with_corpus`, (tokenizer, batches, the encoded training corpus the batches index)."""
    import torch

    from tiekd.data.batching import collate, encode_pair_files, make_batches
    from tiekd.data.prepare import load_prepared
    from tiekd.data.tokenizer import load_tokenizer

    prepared = load_prepared(data)
    tokenizer = load_tokenizer(prepared.tokenizer_dir)
    corpus = encode_pair_files(tokenizer, *prepared.splits["train"])
    batches = make_batches(corpus, max_tokens)
    order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(0)).tolist()
    chosen = [collate(corpus, batches[i]) for i in order[:count]]
    return (tokenizer, chosen, corpus) if with_corpus else (tokenizer, chosen)
