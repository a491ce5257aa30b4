"""The trainer: an arq worker that fine-tunes, evaluates, exports and registers models."""
