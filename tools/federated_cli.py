"""``edgecascade federated``: collaborative training across the sites, from the command line.

::

    edgecascade federated link --pki DIR [--host 127.0.0.1] [--port 9093] [--state DIR]
    edgecascade federated keys SITE --out DIR
    edgecascade federated register SITE --public-key PATH --pki DIR [--cloud-config cloud.toml]
                                   [--superlink HOST:PORT] [--state DIR]
    edgecascade federated node --site SITE --data PATH --checkpoint DIR --key PATH --ca PEM
                               --superlink HOST:PORT [--holdout-fraction 0.2] [--port 9094]
    edgecascade federated start --config cloud.toml [--state DIR] [--wait] [--ca PEM]
    edgecascade federated schedule --config cloud.toml --every SECONDS [--state DIR] [--ca PEM]
    edgecascade federated status [RUN] --cloud URL --token-file F [--json]

The cloud's side: ``link`` runs the SuperLink in the foreground (its TLS certificate from
``edgecascade certs federation``) and writes the Flower home in ``--state`` through which the
other commands reach it; ``register`` lets a site's key in (the SuperLink authenticates its
SuperNode with it, the ServerApp checks its updates' signatures with it); ``start`` submits a
run and with ``--wait`` follows it to its end (:mod:`edgecascade.tools.federated_runs`);
``schedule`` submits one every so often. A site's side: ``keys`` makes its key pair, ``node``
runs its SuperNode in the foreground (``keys``, ``register`` and ``node`` are in
:mod:`edgecascade.tools.federated_sites_cli`). ``status`` reads the cloud's API with an admin
token (``/v1/federated/runs``): without RUN a table of the newest runs, with RUN that run and
a table of its rounds (:mod:`edgecascade.tools.federated_report`). Each subcommand is added by
its own ``_add_<name>(sub)``.

Exit status: 0 done (``start --wait``: the aggregate was published or promoted), 1 the cloud
refused or could not be reached (its message is printed), or a followed run failed,
2 bad arguments, files or settings, 3 (``start --wait``) the gate rejected the aggregate,
4 the SuperLink refused or could not be reached; ``link`` and ``node`` exit with their
daemon's status.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgecascade.device_sdk.errors import ConfigError, EdgeCascadeError
from edgecascade.tools.federated_report import run_report, runs_table
from edgecascade.tools.federated_sites_cli import add_keys, add_node, add_register, port_number, state_option
from edgecascade.tools.federation_setup import HOME, flower_home, reachable
from edgecascade.tools.unknown_cli import cloud_client

if TYPE_CHECKING:
    from edgecascade.cloud_service.config import CloudConfig
    from edgecascade.tools.federated_runs import Follower

ROUTE = "/v1/federated/runs"  # the cloud's ROUTE_FEDERATED_RUNS (a client imports no cloud code)
LISTED_RUNS = 20
LINK_PORT = 9093  # [federated] link_address's default port


def register(sub: Any) -> None:
    """Add ``federated`` to the top-level subcommands."""
    p = sub.add_parser(
        "federated", help="collaborative training across the sites: SuperLink, sites' SuperNodes, runs"
    )
    federated_sub = p.add_subparsers(dest="federated", required=True)
    for add in (_add_link, add_keys, add_register, add_node, _add_start, _add_schedule, _add_status):
        add(federated_sub)


def _cloud_options(p: argparse.ArgumentParser, required: bool = True) -> None:
    """The options that reach the cloud's API with an admin token (as ``edgecascade unknown`` has them)."""
    url_help = "the cloud's URL" if required else "read the runs from this cloud's API, not its database"
    p.add_argument("--cloud", required=required, metavar="URL", help=url_help)
    p.add_argument("--token-file", required=required, metavar="F", help="a file holding an admin token")
    p.add_argument("--ca-file", metavar="PEM", help="the CA of the cloud's HTTPS certificate")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default %(default)s)")


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


# ------------------------------------------------------------------------------ link
def _add_link(sub: Any) -> None:
    p = sub.add_parser(
        "link",
        help="run the SuperLink beside the cloud, in the foreground",
        description="Run Flower's SuperLink with TLS (DIR/federation/link.pem, link.key, the site CA "
        "DIR/ca.pem), SuperNode authentication on and its state in STATE/link.db, until SIGINT or "
        "SIGTERM (passed on to it); write STATE/flower-home, through which `register`, `start` and "
        "`schedule` reach it. Exits with the SuperLink's status.",
    )
    p.add_argument("--pki", required=True, metavar="DIR", help="the site CA's directory (edgecascade certs)")
    p.add_argument("--host", default="127.0.0.1", help="the address it listens on (default %(default)s)")
    p.add_argument("--port", type=port_number, default=LINK_PORT, help="its port (default %(default)s)")
    state_option(p)
    p.set_defaults(func=_link)


def _link(args: argparse.Namespace) -> int:
    from edgecascade.federation import deploy
    from edgecascade.tools.certs import Pki
    from edgecascade.tools.foreground import run_foreground

    pki = Pki(Path(args.pki))
    for path in (pki.link_cert, pki.link_key):
        if not path.is_file():
            raise ConfigError(
                f"no SuperLink certificate {path}: run `edgecascade certs federation {args.pki}`"
            )
    state = Path(args.state)
    link = deploy.LinkSettings(
        args.host, args.port, pki.link_cert, pki.link_key, pki.ca_cert, state / "link.db"
    )
    command = deploy.link_command(link)
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    home = deploy.write_flower_home(state / HOME, reachable(args.host, args.port), pki.ca_cert)
    print(f"SuperLink on {link.address}, its state in {link.database}; the Flower home is {home}", flush=True)
    return run_foreground(command, deploy.flower_env(home))


# ------------------------------------------------------------------------------ start, schedule
def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="cloud.toml", help="the cloud's settings ([federated])")
    state_option(p)
    p.add_argument(
        "--ca", type=Path, metavar="PEM", help="the site CA that verifies the SuperLink (default: link's)"
    )
    p.add_argument(
        "--start-timeout",
        type=_positive,
        default=120.0,
        metavar="SECONDS",
        help="how long a run may take to be recorded in the cloud database (default %(default)s)",
    )
    _cloud_options(p, required=False)


def _add_start(sub: Any) -> None:
    p = sub.add_parser(
        "start",
        help="submit a collaborative training run; with --wait, follow it to its end",
        description="Submit a run to the SuperLink at [federated] link_address of --config (the "
        "ServerApp reads that cloud.toml) and print its Flower run id. With --wait, print a line "
        "whenever the run's stage, rounds done or last round change, read from the cloud database "
        "(or from the cloud's API with --cloud and --token-file), until it ends: exit status 0 "
        "published or promoted, 3 rejected by the gate, 1 failed.",
    )
    _run_options(p)
    p.add_argument("--wait", action="store_true", help="follow the run until it ends")
    p.set_defaults(func=_start)


def _start(args: argparse.Namespace) -> int:
    from edgecascade.cloud_service.config import load_cloud_config
    from edgecascade.federation import deploy

    config = load_cloud_config(args.config)
    home, app = _prepare(args, config)
    with contextlib.ExitStack() as stack:
        follower = _follower(args, config, home, _sleep, stack) if args.wait else None
        flower_run = deploy.submit_run(home, app, Path(args.config))
        print(
            f"Flower run {flower_run} submitted to the SuperLink at {config.federated.link_address}",
            flush=True,
        )
        if follower is None:
            return 0
        try:
            outcome = follower.follow(flower_run, show)
        except KeyboardInterrupt:
            print(f"stopped waiting; Flower run {flower_run} goes on at the SuperLink")
            return 130
    assert outcome is not None  # _sleep never says stop
    return outcome.exit_code


def _add_schedule(sub: Any) -> None:
    p = sub.add_parser(
        "schedule",
        help="submit a collaborative training run every so often, one at a time",
        description="Submit a run (as `start` does) every SECONDS, never two at once: a run that "
        "outlasts the period is followed to its end and the next starts then. Prints a line when "
        "each run starts and ends; stops on SIGINT or SIGTERM (a run under way goes on).",
    )
    _run_options(p)
    p.add_argument(
        "--every", required=True, type=_positive, metavar="SECONDS", help="seconds from start to start"
    )
    p.set_defaults(func=_schedule)


def _schedule(args: argparse.Namespace) -> int:
    from edgecascade.cloud_service.config import load_cloud_config
    from edgecascade.federation import deploy
    from edgecascade.tools.federated_runs import schedule_runs

    config = load_cloud_config(args.config)
    home, app = _prepare(args, config)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with contextlib.ExitStack() as stack:
            follower = _follower(args, config, home, stop.wait, stack)
            show(f"a run every {args.every:g} s on the SuperLink at {config.federated.link_address}")
            return schedule_runs(
                lambda: deploy.submit_run(home, app, Path(args.config)), follower, args.every, show
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _prepare(args: argparse.Namespace, config: CloudConfig) -> tuple[Path, Path]:
    """Check the trusted site keys; the Flower home (at ``link_address``) and the app to submit."""
    from edgecascade.federation import deploy
    from edgecascade.federation.site_keys import load_public_keys

    if bool(args.cloud) != bool(args.token_file):
        raise ConfigError("--cloud and --token-file go together")
    settings = config.federated
    keys = load_public_keys(settings.site_keys)  # what the ServerApp will load: refuse now, not in a run
    if len(keys) < settings.min_sites:
        print(
            f"edgecascade: {len(keys)} site keys in {settings.site_keys}, [federated] min_sites is "
            f"{settings.min_sites}: rounds fall short until more sites are registered",
            file=sys.stderr,
        )
    home = flower_home(args.state, superlink=settings.link_address, ca=args.ca)
    return home, deploy.write_app(Path(args.state) / "app")


def _follower(
    args: argparse.Namespace, config: CloudConfig, home: Path, wait: Any, stack: contextlib.ExitStack
) -> Follower:
    """A Follower of the runs in the cloud database, or the cloud's API with ``--cloud``."""
    from edgecascade.tools.federated_runs import ApiRuns, DatabaseRuns, Follower, flower_status

    if args.cloud:
        source: Any = ApiRuns(stack.enter_context(cloud_client(args)))
    else:
        from edgecascade.cloud_service.federation_store import FederationStore
        from edgecascade.cloud_service.store import open_engine

        engine = open_engine(config.cloud.database_url)
        stack.callback(engine.dispose)
        source = DatabaseRuns(FederationStore(engine))
    return Follower(source, wait, flower_status=flower_status(home), appear_timeout=args.start_timeout)


def _sleep(seconds: float) -> bool:
    time.sleep(seconds)
    return False


def show(line: str) -> None:
    """Print a progress line with the time of day."""
    print(f"{time.strftime('%H:%M:%S')} {line}", flush=True)


# ------------------------------------------------------------------------------ status
def _add_status(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="the newest runs, or one run and its rounds",
        description="Without RUN, the newest runs: state, stage, rounds done of planned, the base and "
        "candidate model versions. With RUN, that run and each round: accepted of sampled sites, late "
        "ones, refused ones with their reasons, mean bytes moved per accepted site, seconds.",
    )
    p.add_argument("run", type=int, nargs="?", metavar="RUN", help="a run's id (default: list the runs)")
    p.add_argument("--json", action="store_true", help="print the cloud's answer as JSON instead")
    _cloud_options(p)
    p.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    path = f"{ROUTE}?limit={LISTED_RUNS}" if args.run is None else f"{ROUTE}/{args.run}"
    with cloud_client(args) as http:
        try:
            answer = http.call_json("GET", path)
        except EdgeCascadeError as exc:
            what = "the runs" if args.run is None else f"run {args.run}"
            print(f"edgecascade: the cloud did not show {what}: {exc}")
            return 1
    if args.json:
        print(json.dumps(answer, indent=2, sort_keys=True))
    elif args.run is None:
        print(runs_table(answer["runs"]) if answer["runs"] else "no federated runs yet")
    else:
        print(run_report(answer))
    return 0
