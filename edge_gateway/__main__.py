"""``python -m edge_gateway --config gateway.toml``: run the gateway daemon.

Exit codes (device_sdk.errors): 0 stopped cleanly (SIGTERM/SIGINT); 2 bad configuration; 3 model bundle
unusable; 4 broker unreachable; 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from edgecascade.device_sdk.errors import EXIT_OK, EdgeCascadeError, exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgecascade gateway", description="Run the edge gateway daemon.")
    parser.add_argument(
        "--config", help="gateway.toml (settings may also come from EC_GATEWAY__*/EC_MQTT__*)"
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
