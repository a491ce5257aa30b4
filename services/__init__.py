"""The RecForge services: api, trainer, inference."""
