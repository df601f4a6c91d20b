"""Language models: corpora, decoder-only transformers, token-level ResMem and kNN-LM, and the stages and report
of `lm_experiments`."""
