from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.config import Settings
from shared.errors import ConfigurationError


def test_database_url_is_normalised_to_asyncpg() -> None:
    settings = Settings(database_url="postgresql://u@h:5432/db")
    assert settings.database_url == "postgresql+asyncpg://u@h:5432/db"
    assert Settings(database_url="postgres://u@h/db").database_url == "postgresql+asyncpg://u@h/db"


def test_non_postgres_url_is_refused() -> None:
    with pytest.raises(ValidationError, match="PostgreSQL"):
        Settings(database_url="mysql://u@h/db")


def test_environment_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECFORGE_API_PORT", "9100")
    monkeypatch.setenv("RECFORGE_LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.api_port == 9100
    assert settings.log_level == "DEBUG"
    assert settings.inference_port == 8001


def test_production_refuses_the_default_secret() -> None:
    with pytest.raises(ValidationError, match="RECFORGE_SECRET_KEY"):
        Settings(env="production")
    with pytest.raises(ValidationError, match="at least 16"):
        Settings(env="production", secret_key="short")
    assert Settings(env="production", secret_key="a-real-secret-value").env == "production"


def test_urls_fall_back_to_the_embedded_servers(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, database_url=None, redis_url=None)
    with pytest.raises(ConfigurationError, match="recforge up"):
        settings.resolved_database_url()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "infra.json").write_text(
        json.dumps(
            {"database_url": "postgresql://postgres:@/recforge?host=/x", "redis_url": "unix:///x.sock"}
        )
    )
    assert settings.resolved_database_url() == "postgresql+asyncpg://postgres:@/recforge?host=/x"
    assert settings.resolved_redis_url() == "unix:///x.sock"


async def test_services_warn_at_start_about_the_development_secret(
    settings: Settings, db: object, caplog: pytest.LogCaptureFixture
) -> None:
    from asgi_lifespan import LifespanManager
    from pydantic import SecretStr

    from services.api.app import create_app as create_api
    from services.inference.app import create_app as create_inference
    from shared.config import DEV_SECRET

    for create in (create_api, create_inference):
        for secret, warned in ((DEV_SECRET, True), ("a-private-secret-of-enough-length", False)):
            caplog.clear()
            app = create(settings.model_copy(update={"secret_key": SecretStr(secret)}))
            with caplog.at_level(logging.WARNING):
                async with LifespanManager(app):
                    pass
            said = [r.getMessage() for r in caplog.records if "RECFORGE_SECRET_KEY" in r.getMessage()]
            assert bool(said) is warned, (create.__module__, secret, said)


def test_sealed_credentials_open_only_with_the_same_secret() -> None:
    from shared.security import seal, unseal

    sealed = seal("server secret", "jira-token-123")
    assert "jira-token-123" not in sealed and sealed != seal("server secret", "jira-token-123")  # random IV
    assert unseal("server secret", sealed) == "jira-token-123"
    with pytest.raises(ValueError, match="RECFORGE_SECRET_KEY changed"):
        unseal("another secret", sealed)
