from tests.services.api.conftest import admin_key, world  # noqa: F401  (shared fixtures)
from tests.trainer.test_jobs import tiny_model  # noqa: F401
