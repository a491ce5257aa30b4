"""One settings object per process, read from the environment (prefix ``RECFORGE_``)."""

from __future__ import annotations

import json
import os
import socket
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET = "recforge-dev-secret-change-me"


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class LogFormat(StrEnum):
    json = "json"
    console = "console"


Port = Annotated[int, Field(ge=1, le=65535)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RECFORGE_", env_file=".env", extra="ignore")

    env: Environment = Environment.development
    # Unset means "use the embedded PostgreSQL / Redis started by `recforge up`".
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path("./.recforge")
    # Where datasets, checkpoints, model artifacts and catalog indexes are stored: file:///path (a folder
    # every machine mounts) or s3://bucket/prefix (AWS S3, MinIO, Ceph; credentials and region from
    # botocore's chain). Unset: the data directory itself.
    storage_url: str | None = None
    s3_endpoint_url: str | None = None  # an S3-compatible server other than AWS (MinIO, Ceph)
    # This process's cache of stored objects and recomputable results. Unset: DATA_DIR/cache. On a bucket,
    # each pod (or each process `recforge up` starts) keeps its own.
    local_cache_dir: Path | None = None
    # On a bucket: the most this process's copies of stored objects may take; the least recently used go
    # first (keep it under a pod's emptyDir sizeLimit).
    cache_max_gb: float = Field(default=20.0, gt=0)

    host: str = "127.0.0.1"
    api_port: Port = 8000
    inference_port: Port = 8001
    trainer_port: Port = 8002

    log_level: str = "INFO"
    log_format: LogFormat = LogFormat.json

    # Keys API key digests (HMAC): a copy of the database alone cannot be used to check guessed keys.
    secret_key: SecretStr = SecretStr(DEV_SECRET)
    # What a Prometheus scraper sends to read /metrics (`Authorization: Bearer <token>`); admin API keys
    # read it too. Unset: admin keys only. The series name projects' model versions: not for everyone.
    metrics_token: SecretStr | None = None

    db_pool_size: int = Field(default=10, ge=1, le=200)
    db_echo: bool = False
    queue_name: str = "recforge:queue"

    # Dataset uploads: larger bodies answer 413 before they are read; imports run at most this many
    # at a time per API process (each is CPU-bound parsing and validation in a worker thread).
    max_upload_mb: int = Field(default=2048, ge=1)
    # Every other request body (JSON) of the api and inference: larger ones answer 413 unread.
    max_body_kb: int = Field(default=1024, ge=1, le=1024 * 1024)
    max_concurrent_imports: int = Field(default=2, ge=1, le=64)
    # Server-sent event streams (GET /training-jobs/{id}/events) open at once per API process; more
    # answer 429. Each holds a Redis subscription.
    max_event_streams: int = Field(default=64, ge=1, le=10_000)
    # The compute budget of a project created without one: enough for a newcomer's first fine-tunes
    # (a job reserves its compute_limit_hours, 1 by default), never more than an admin allows.
    default_cpu_hours: float = Field(default=10.0, ge=0, le=1_000_000)
    default_gpu_hours: float = Field(default=0.0, ge=0, le=1_000_000)

    # Trainer: a running job reports progress (and checks for cancellation) every progress_interval_s,
    # checkpoints every checkpoint_interval_s, and is presumed dead after job_heartbeat_timeout_s of
    # silence (then another worker resumes it from its checkpoint, up to max_job_attempts runs). A job
    # queued for lost_job_after_s that the Redis queue does not hold (Redis restarted, or was down
    # when the job was submitted) is enqueued again by the workers' reaper.
    progress_interval_s: float = Field(default=2.0, gt=0, le=60)
    checkpoint_interval_s: float = Field(default=120.0, gt=0)
    job_heartbeat_timeout_s: float = Field(default=60.0, ge=5)
    max_job_attempts: int = Field(default=3, ge=1, le=20)
    lost_job_after_s: float = Field(default=60.0, ge=1)
    # Folders local base models may be trained from (separated by ":", as PATH); hub ids are always
    # allowed. A folder inside data_dir never is.
    model_roots: str = ""
    # The int8 model is servable when its NDCG@10 (or accuracy) is within this of the fp32 model's.
    int8_tolerance: float = Field(default=0.01, ge=0, le=1)
    # Multi-node fine-tunes (hyperparameter nodes > 1): the job's worker is node 0 and hosts torchrun's
    # rendezvous on rdzv_host:rdzv_port, which the other nodes (`recforge train-node`) connect to. Unset
    # host: the address this machine's hostname resolves to (on Kubernetes, give the pod's IP).
    rdzv_host: str | None = None
    rdzv_port: Port = 29400

    # Inference: each model coalesces concurrent requests into batches of at most max_batch items (what
    # arrives while a batch runs forms the next); a busy model may wait batch_wait_ms for a batch to
    # fill, an idle one never waits. At most max_queue items, and no more than max_queue_delay_ms of
    # work at the model's recent speed, wait per model before requests answer 429 (a second: four
    # clients each sending 32-text batches are answered in about 0.12 s on two cores, well inside it).
    # Catalogs of ann_threshold products or more are searched with an HNSW index (usearch),
    # smaller ones exactly. Deployments are re-read every deployment_refresh_s besides the
    # Redis notices. prefer_gpu: use the CUDA provider (fp16 graph) when onnxruntime offers it.
    max_batch: int = Field(default=32, ge=1, le=1024)
    batch_wait_ms: float = Field(default=0.0, ge=0, le=100)
    max_queue: int = Field(default=512, ge=1)
    max_queue_delay_ms: float = Field(default=1000.0, gt=0)
    max_in_flight: int = Field(default=256, ge=1)  # the most a route's adaptive admission ceiling may reach
    ann_threshold: int = Field(default=20_000, ge=1)
    deployment_refresh_s: float = Field(default=30.0, gt=0)
    inference_threads: int | None = Field(default=None, ge=1, le=256)
    prefer_gpu: bool = True
    # onnxruntime's idle threads spin for new work: quicker for one model alone, slower when several
    # models (retriever, reranker, other projects) share the cores, as they do in inference.
    ort_spinning: bool = False
    # What inference served (impressions): buffered in memory and written in batches off the hot path;
    # a full buffer drops new impressions (counted in /metrics) rather than slow a request.
    impression_logging: bool = True
    impression_buffer: int = Field(default=10_000, ge=1, le=1_000_000)
    impression_batch: int = Field(default=500, ge=1, le=10_000)
    impression_flush_s: float = Field(default=0.5, gt=0, le=60)
    # Online metrics: hours that ended more than online_rollup_delay_s ago are answered from hourly
    # rollups; the api rewrites the rollups of the last online_rollup_settle_s every
    # online_rollup_every_s, so events that arrive late (up to the settle time) still count.
    online_rollup_delay_s: float = Field(default=3600, ge=0, le=7 * 86400)
    online_rollup_settle_s: float = Field(default=2 * 86400, ge=0, le=90 * 86400)
    online_rollup_every_s: float = Field(default=600, gt=0, le=86400)
    # The continuous-learning loop: every api replica runs a controller that, each pipeline_tick_s, fires
    # due pipeline triggers (once per tick whatever the replica count: a unique key in Postgres) and
    # moves the runs still going one step on (each run locked by the replica advancing it).
    pipeline_controller: bool = True
    pipeline_tick_s: float = Field(default=5.0, gt=0, le=3600)
    # Webhooks: each delivery is tried up to webhook_max_attempts times, waiting webhook_backoff_s,
    # then twice as long each time (at most an hour), webhook_timeout_s per attempt.
    webhook_max_attempts: int = Field(default=8, ge=1, le=50)
    webhook_backoff_s: float = Field(default=5.0, gt=0, le=3600)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=120)
    # The web console (/ui): a sign-in lasts console_session_hours (never past its API key's expiry);
    # its cookie is Secure when console_secure_cookie (serve the console over HTTPS in production).
    console_session_hours: float = Field(default=12.0, gt=0, le=24 * 30)
    console_secure_cookie: bool = False

    @field_validator("log_level")
    @classmethod
    def _upper_level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str | None) -> str | None:
        if not value:
            return None
        return to_async_url(value)

    @field_validator("redis_url")
    @classmethod
    def _empty_redis(cls, value: str | None) -> str | None:
        return value or None

    @model_validator(mode="after")
    def _no_default_secret_in_production(self) -> Settings:
        secret = self.secret_key.get_secret_value()
        if self.env == Environment.production and (secret == DEV_SECRET or len(secret) < 16):
            raise ValueError(
                "RECFORGE_SECRET_KEY must be set to a private value of at least 16 characters when "
                "RECFORGE_ENV=production"
            )
        return self

    def warnings(self) -> list[str]:
        """What a service says at start about settings that are only fit for development."""
        found = []
        if self.secret_key.get_secret_value() == DEV_SECRET:
            found.append(
                "RECFORGE_SECRET_KEY is the development default, which anyone can read in RecForge's "
                "source: set a private value before any key leaves this machine"
            )
        if self.env == Environment.production and not self.console_secure_cookie:
            found.append(
                "RECFORGE_CONSOLE_SECURE_COOKIE is off: the web console's session cookie is marked Secure "
                "only on requests that reach the api as HTTPS; behind a proxy that ends TLS, set it to true"
            )
        return found

    @property
    def run_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def rendezvous_host(self) -> str:
        """Where the other nodes of a multi-node fine-tune reach this worker."""
        if self.rdzv_host:
            return self.rdzv_host
        from shared.errors import ConfigurationError

        try:
            return socket.gethostbyname(socket.gethostname())
        except OSError as exc:
            raise ConfigurationError(
                f"cannot tell the other nodes where this machine is ({exc}): set RECFORGE_RDZV_HOST to an "
                "address of it they reach"
            ) from exc

    @property
    def storage_location(self) -> str:
        return self.storage_url or f"file://{self.data_dir.resolve()}"

    @property
    def workspace(self) -> Path:
        """The local folder where a stored object's key is a relative path: the store's own folder, or
        for a bucket this machine's mirror of the objects it reads and writes (see shared.storage)."""
        location = self.storage_location
        if location.startswith("file://"):
            return Path(location.removeprefix("file://")).resolve()
        if "://" not in location:
            return Path(location).resolve()
        return self.cache_dir / "store"

    @property
    def cache_max_bytes(self) -> int:
        return int(self.cache_max_gb * 2**30)

    def shown(self, path: Path) -> str:
        """A path as logs name it: relative to the workspace or to the data directory when under one."""
        resolved = path.resolve()
        for root in (self.workspace, self.data_dir.resolve()):
            if resolved.is_relative_to(root):
                return str(resolved.relative_to(root))
        return str(path)

    @property
    def on_bucket(self) -> bool:
        return self.storage_location.startswith("s3://")

    @property
    def shares_data_dir(self) -> bool:
        """Whether the store is this data directory (checkpoints then need no copy of their own)."""
        return self.workspace == self.data_dir.resolve()

    @property
    def artifacts_dir(self) -> Path:
        return self.workspace / "artifacts"

    @property
    def datasets_dir(self) -> Path:
        return self.workspace / "datasets"

    @property
    def jobs_dir(self) -> Path:
        """Running fine-tunes' work folders (checkpoints: copied to a store that is not DATA_DIR)."""
        return self.local_cache_dir / "jobs" if self.local_cache_dir else self.data_dir / "jobs"

    @property
    def cache_dir(self) -> Path:
        """Results that can be recomputed (baseline scores per dataset version and base model) and, on a
        bucket, this machine's copies of stored objects."""
        return self.local_cache_dir or self.data_dir / "cache"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024

    @property
    def model_root_paths(self) -> list[Path]:
        return [Path(part) for part in self.model_roots.split(os.pathsep) if part.strip()]

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_kb * 1024

    def resolved_database_url(self) -> str:
        """The configured URL, else the one of the embedded server `recforge up` started."""
        if self.database_url:
            return self.database_url
        state = read_embedded_state(self.run_dir)
        if state.get("database_url"):
            return to_async_url(state["database_url"])
        from shared.errors import ConfigurationError

        raise ConfigurationError(
            "No database configured: set RECFORGE_DATABASE_URL, or run `recforge up` to start "
            "the embedded PostgreSQL."
        )

    def resolved_redis_url(self) -> str:
        if self.redis_url:
            return self.redis_url
        state = read_embedded_state(self.run_dir)
        if state.get("redis_url"):
            return str(state["redis_url"])
        from shared.errors import ConfigurationError

        raise ConfigurationError(
            "No Redis configured: set RECFORGE_REDIS_URL, or run `recforge up` to start the embedded Redis."
        )


def to_async_url(url: str) -> str:
    """Normalise any PostgreSQL URL to the asyncpg driver SQLAlchemy uses at run time."""
    for prefix in ("postgresql+asyncpg://", "postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("database_url must be a PostgreSQL URL (postgresql://...)")


def read_embedded_state(run_dir: Path) -> dict[str, str]:
    path = run_dir / "infra.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@lru_cache
def get_settings() -> Settings:
    return Settings()
