"""Helpers the test modules share: processes and ports, small data files, a tiny model, the worker."""
