"""Evaluation metrics beyond the task rewards: diversity (:mod:`.diversity`)."""
