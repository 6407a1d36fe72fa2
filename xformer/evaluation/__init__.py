"""Evaluating a model: loss, perplexity and the task's metrics over a split (evaluator), BLEU,
length generalisation (extrapolation) and pictures of encodings and attention (viz)."""
