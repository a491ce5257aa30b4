"""Datasets: import, validate, split, describe and store versioned e-commerce data."""
