"""The API fixtures (people, projects, keys) for trainer tests that go through the API."""

from tests.services.api.conftest import admin_key, world

__all__ = ["admin_key", "world"]
