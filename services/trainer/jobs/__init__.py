"""One handler per kind of job: ``finetune`` (bi-encoder, cross-encoder, classifier), and ``evaluate``,
``export`` and ``index``, which work on a registered model version. Each handler reads its inputs, runs
its blocking work in a thread and returns what the job store records; the runner dispatches to them."""
