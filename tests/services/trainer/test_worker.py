from __future__ import annotations

from typing import Any

import httpx

from services.trainer.health import health_app


async def test_worker_health_endpoints(db: Any, engine: Any, settings: Any) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(settings.resolved_redis_url())
    app = health_app(engine, redis)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        assert (await client.get("/healthz")).status_code == 200
        ready = await client.get("/readyz")
    await redis.aclose()
    assert ready.status_code == 200, ready.text


def test_the_worker_starts_without_loading_torch() -> None:
    """torch and transformers load with the first job, so a worker answers /readyz in moments."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import services.trainer.worker\n"
        "bad = sorted(m for m in ('torch', 'transformers') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
