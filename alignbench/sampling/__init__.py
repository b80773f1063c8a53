"""Sampling: step kernels with log-probabilities (:mod:`.kernels`); rollout plans and the tree
executor follow with the engine (specs/algorithms.md §0)."""
