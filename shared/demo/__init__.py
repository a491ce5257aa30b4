"""The demo's own data: a deterministic sample shop the project generates itself."""
