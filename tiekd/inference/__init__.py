"""Inference: translating with a trained model, and shipping it. `translate` decodes with PyTorch
(batched beam search and greedy), `translate_cli` is the `tiekd translate` command over either engine,
`export` converts a model to CTranslate2 and translates with it, `shortlist` builds the lexical
shortlist CTranslate2 can decode over, and `decode_limits` holds the length limits every decoder
shares (free of torch, so the command line reads them at once)."""
