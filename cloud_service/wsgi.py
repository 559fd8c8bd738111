"""The cloud API under gunicorn, the way to run it in production::

    EC_CLOUD_CONFIG=/etc/edgecascade/cloud.toml gunicorn \\
        -c python:edgecascade.cloud_service.gunicorn_conf 'edgecascade.cloud_service.wsgi:create_app()'

``create_app()`` runs once in each worker process, after the fork (the configuration
never preloads the app): every worker opens its own database connections, LiteRT
interpreters and background threads, none of which survive a fork. The settings are
``cloud.toml`` at ``EC_CLOUD_CONFIG`` (optional) with ``EC_CLOUD__*`` overrides, the
same as ``python -m edgecascade.cloud_service --config``, which stays as the development
server (Werkzeug) for tests and the demo.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from edgecascade.cloud_service.config import CloudConfig, load_cloud_config
from edgecascade.device_sdk.errors import EdgeCascadeError

if TYPE_CHECKING:
    from flask import Flask

logger = logging.getLogger(__name__)

CONFIG_ENV = "EC_CLOUD_CONFIG"  # path of cloud.toml; unset: defaults and EC_CLOUD__* only


def load_config() -> CloudConfig:
    """The cloud's settings as a gunicorn deployment gives them: ``EC_CLOUD_CONFIG`` and ``EC_CLOUD__*``."""
    return load_cloud_config(os.environ.get(CONFIG_ENV) or None)


def create_app() -> Flask:
    """The app of one gunicorn worker; an error here stops gunicorn ("worker failed to boot", exit 3).

    Unlike the development server, which opens the database on first use, a worker opens
    it (migrating its schema if behind) before it serves: a database that cannot be reached
    or migrated stops the start instead of failing the first upload.
    """
    from edgecascade.cloud_service.app import create_app as build
    from edgecascade.cloud_service.learning import Learning

    try:
        app = build(load_config())
        learning: Learning = app.extensions["edgecascade.learning"]
        learning.store  # noqa: B018 (opened for its side effect)
    except EdgeCascadeError as exc:
        logger.error("cannot start the cloud service: %s", exc)
        raise
    logger.info("cloud worker %d ready", os.getpid())
    return app
