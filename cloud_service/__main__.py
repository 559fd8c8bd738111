"""``edgecascade cloud --config cloud.toml`` (or ``python -m edgecascade.cloud_service``): the cloud API.

This is the Werkzeug development server.

Exit codes: 0 stopped cleanly; 2 bad configuration; 3 model bundle unusable; 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import ssl
import sys
from pathlib import Path

from edgecascade.device_sdk.errors import EXIT_ERROR, EXIT_OK, ConfigError, EdgeCascadeError, exit_code
from edgecascade.device_sdk.logs import LOG_FORMATS, configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecascade cloud", description="Run the cloud inference API.")
    parser.add_argument(
        "--config",
        help="cloud.toml, whose relative paths are relative to it (also: EC_<SECTION>__<KEY> variables)",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="text lines, or one JSON object per line"
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    from werkzeug.serving import make_server

    from edgecascade.cloud_service.app import create_app
    from edgecascade.cloud_service.config import load_cloud_config

    try:
        config = load_cloud_config(args.config)
        tls = tls_context(config.cloud.tls_cert, config.cloud.tls_key)
        app = create_app(config)
        server = make_server(config.cloud.host, config.cloud.port, app, threaded=True, ssl_context=tls)
        # Accepted connections inherit TCP_NODELAY from the listening socket (Linux): without it a
        # small reply waits for the client's delayed ACK, about 13 ms per round trip.
        server.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except EdgeCascadeError as exc:
        logging.error("%s", exc)
        return exit_code(exc)
    except OSError as exc:  # e.g. the port is taken
        logging.error("%s", exc)
        return EXIT_ERROR
    scheme = "https" if tls is not None else "http"
    logging.info("cloud service listening on %s://%s:%d", scheme, config.cloud.host, server.server_port)
    _stop_on_sigterm(server)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()
    return EXIT_OK


def tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    """The server's TLS context (TLS 1.2 or later), or None to serve plain HTTP (behind a TLS proxy)."""
    if cert is None or key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the cloud's TLS certificate {cert}: {exc}") from None
    return context


def _stop_on_sigterm(server: object) -> None:
    import signal
    import threading

    def on_signal(signum: int, frame: object) -> None:
        threading.Thread(target=server.shutdown).start()  # type: ignore[attr-defined]

    signal.signal(signal.SIGTERM, on_signal)


if __name__ == "__main__":
    sys.exit(main())
