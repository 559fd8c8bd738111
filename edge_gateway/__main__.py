"""``edgecascade gateway --config gateway.toml`` (or ``python -m edgecascade.edge_gateway``): the gateway.

Exit codes (device_sdk.errors): 0 stopped cleanly (SIGTERM/SIGINT); 2 bad configuration; 3 model bundle
unusable; 4 broker unreachable; 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from edgecascade.device_sdk.errors import EXIT_OK, EdgeCascadeError, exit_code
from edgecascade.device_sdk.logs import LOG_FORMATS, configure_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecascade gateway", description="Run the edge gateway daemon.")
    parser.add_argument(
        "--config",
        help="gateway.toml, whose relative paths are relative to it (also: EC_<SECTION>__<KEY> variables)",
    )
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text", help="text lines, or one JSON object per line"
    )
    args = parser.parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    from edgecascade.edge_gateway.config import load_gateway_config
    from edgecascade.edge_gateway.daemon import GatewayDaemon

    try:
        GatewayDaemon(load_gateway_config(args.config)).run_forever()
    except EdgeCascadeError as exc:
        logging.error("%s", exc)
        return exit_code(exc)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
