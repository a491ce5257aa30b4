"""Fine-tuning: one module per task type (bi-encoder, cross-encoder, classifier) beside the training
loop they share (``loop``) and its checkpoints (``checkpoint``).

CPU speed comes from work done once, outside the step: every distinct text is tokenized in one
batched call, batches are built from examples of similar length (length-bucketed) and padded only
to their own longest text, and torch uses every core. CUDA runs use mixed precision."""
