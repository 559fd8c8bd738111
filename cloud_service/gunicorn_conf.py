"""gunicorn's settings for the cloud API (``gunicorn -c python:edgecascade.cloud_service.gunicorn_conf``).

Where to listen and the TLS certificate come from the cloud's own settings
(``cloud.host``, ``cloud.port``, ``cloud.tls_cert``, ``cloud.tls_key``; see
:mod:`edgecascade.cloud_service.wsgi`), so one ``cloud.toml`` describes the deployment.
Command-line flags override anything here (``--workers 4``, ``--threads 8``,
``--access-logfile -``).

Why these values:

* ``gthread`` workers, one per core, four threads each: inference is CPU work in LiteRT,
  so more processes than cores only contend; the threads overlap TLS, network and
  database waits. Idle keep-alive connections wait in the worker's poller, not in a thread.
* ``preload_app`` off: each worker builds the app after the fork (see ``wsgi``).
* ``max_requests`` 0, workers are never recycled: the worker that started a retraining
  job watches its process; a recycled worker would leave a crash of that job to the
  ``retrain.stale_seconds`` reaper and skip ``retrain.auto_promote``.
* gunicorn sets ``TCP_NODELAY`` on its listening socket, which accepted connections
  inherit on Linux: a response is not held back by Nagle's algorithm waiting for the
  client's delayed ACK (about 13 ms per HTTPS round trip; see ``edgecascade bench cloud``).
* Keep-alive: the Werkzeug development server closes the connection after every response,
  so each request pays a new TLS handshake; gunicorn keeps a gateway's connection open.
* SIGTERM is a graceful stop: workers finish in-flight requests (``graceful_timeout``),
  then gunicorn exits 0. A running retraining job is a process of its own and goes on.

A bad ``cloud.toml`` stops gunicorn here, before any worker starts, with exit code 2.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
from typing import Any

from edgecascade.cloud_service.wsgi import load_config
from edgecascade.device_sdk.errors import ConfigError, exit_code

try:
    _cloud = load_config().cloud
except ConfigError as _exc:
    print(f"error: {_exc}", file=sys.stderr)
    sys.exit(exit_code(_exc))

bind = [f"[{_cloud.host}]:{_cloud.port}" if ":" in _cloud.host else f"{_cloud.host}:{_cloud.port}"]
certfile = str(_cloud.tls_cert) if _cloud.tls_cert is not None else None
keyfile = str(_cloud.tls_key) if _cloud.tls_key is not None else None

worker_class = "gthread"
workers = os.cpu_count() or 1
threads = 4
preload_app = False
max_requests = 0
timeout = 30  # a worker whose main loop is stuck this long is restarted
graceful_timeout = 30
keepalive = 30  # seconds an idle keep-alive connection stays open (gateways reuse theirs)
proc_name = "edgecascade-cloud"

LOG_FORMAT = "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"
control_socket_disable = True  # gunicorn >= 25 would otherwise make a control socket in $HOME


def post_fork(server: Any, worker: Any) -> None:
    """The service's loggers to stderr in each worker (gunicorn configures only its own)."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)


def ssl_context(config: Any, default_ssl_context_factory: Any) -> ssl.SSLContext:
    """gunicorn's server context, held to TLS 1.2 or later like the development server's."""
    context: ssl.SSLContext = default_ssl_context_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
