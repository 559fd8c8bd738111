"""``edgecascade bench cloud``: ``/v1/infer`` throughput on gunicorn and on the development server.

Both servers run the same bundle as separate processes, started the way an operator
starts them (``gunicorn -c python:edgecascade.cloud_service.gunicorn_conf …`` and
``python -m edgecascade.cloud_service``), with HTTPS and a bearer token. The same load
is sent to each in turn: ``clients`` client processes, each with one keep-alive HTTPS
connection, posting pre-built request envelopes (cut-2 features of test images, as a
gateway forwards them) back to back for ``seconds``. One run; requests per second over
every client, and the latency percentiles of every request.

The client processes get their work as JSON on stdin and answer with JSON on stdout
(``python -m edgecascade.tools.bench_cloud`` is the client). They share the machine's
cores with the server, which is the same for both servers.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.core.chain import run_partitions
from edgecascade.device_sdk.model.bundle import Bundle
from edgecascade.device_sdk.wire import codec
from edgecascade.tools.stack import terminate

SERVERS = ("werkzeug", "gunicorn")
WARMUP = 20  # untimed requests per client before the clock starts
_LENGTH = struct.Struct(">I")


def cloud_requests(bundle: Bundle, images: np.ndarray, device_id: str = "bench-gateway") -> list[bytes]:
    """``/v1/infer`` bodies for ``images``: what a gateway forwards (cut 2, or in the models mode
    the input), encoded as it sends it."""
    manifest = bundle.manifest
    cut2 = run_partitions(bundle, images).features[1]
    encoding = manifest.partition("gateway").encoding
    return [
        wire.envelope_to_bytes(
            wire.Envelope(
                wire.Header(wire.MessageType.INFER_REQUEST, device_id, manifest.version, i + 1),
                codec.encode_features(features, encoding),
            )
        )
        for i, features in enumerate(cut2)
    ]


def server_command(kind: str, workers: int, threads: int) -> list[str]:
    """How an operator starts the cloud with ``kind`` (settings from ``EC_CLOUD__*``)."""
    if kind == "werkzeug":
        return [sys.executable, "-m", "edgecascade.cloud_service"]
    if kind == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "python:edgecascade.cloud_service.gunicorn_conf",
            f"--workers={workers}",
            f"--threads={threads}",
            "edgecascade.cloud_service.wsgi:create_app()",
        ]
    raise ValueError(f"server must be one of {SERVERS}, got {kind!r}")


def start_server(
    kind: str, env: dict[str, str], port: int, log: Path, workers: int, threads: int, timeout: float = 60.0
) -> subprocess.Popen[bytes]:
    """Start a cloud server process and wait until it listens (its output goes to ``log``)."""
    from edgecascade.tools.broker import wait_for_port

    with open(log, "wb") as out:
        process = subprocess.Popen(
            server_command(kind, workers, threads),
            env=os.environ | env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port("127.0.0.1", port, timeout, process)
    except BaseException:
        stop_server(process)
        raise
    return process


def stop_server(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    """SIGTERM, as a service manager stops it (SIGKILL after ``timeout``); its exit code."""
    return terminate(process, timeout, "the cloud server")


def run_clients(
    port: int, ca: Path, token: str, requests_file: Path, clients: int, seconds: float
) -> dict[str, Any]:
    """``clients`` processes posting back to back for ``seconds``; throughput and latency over all."""
    start_at = time.time() + 2.0 + 0.5 * clients  # every client connected and warmed up by then
    processes = []
    for i in range(clients):
        job = {
            "port": port,
            "ca": str(ca),
            "token": token,
            "requests": str(requests_file),
            "offset": i,
            "start_at": start_at,
            "seconds": seconds,
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "edgecascade.tools.bench_cloud"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None
        process.stdin.write(json.dumps(job))
        process.stdin.close()
        processes.append(process)
    results = []
    for process in processes:
        assert process.stdout is not None
        output = process.stdout.read()
        if process.wait(seconds + 120) != 0:
            raise RuntimeError(f"a benchmark client exited with {process.returncode}")
        results.append(json.loads(output))
    latencies = np.array([ms for r in results for ms in r["latencies_ms"]], dtype=np.float64)
    errors = sum(r["errors"] for r in results)
    return {
        "requests": int(latencies.size),
        "errors": errors,
        "reconnects": sum(r["reconnects"] for r in results),
        "requests_per_s": round(latencies.size / seconds, 1),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2) if latencies.size else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 2) if latencies.size else None,
        "mean_ms": round(float(latencies.mean()), 2) if latencies.size else None,
    }


def bench_cloud(
    bundle: Bundle,
    images: np.ndarray,
    *,
    clients: int = 4,
    seconds: float = 5.0,
    workers: int | None = None,
    threads: int = 4,
    servers: tuple[str, ...] = SERVERS,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Each server in turn under the same load; the JSON report."""
    from edgecascade.cloud_service.tokens import TokenStore
    from edgecascade.tools.broker import free_port
    from edgecascade.tools.certs import init_pki

    workers = workers or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="ec-bench-cloud-") as scratch:
        root = Path(workdir or scratch)
        pki = init_pki(root / "pki")  # the server certificate names 127.0.0.1
        token = TokenStore(root / "tokens.db").create("gateway", "bench")[0]
        requests_file = root / "requests.bin"
        with open(requests_file, "wb") as f:
            for body in cloud_requests(bundle, images):
                f.write(_LENGTH.pack(len(body)) + body)
        report: dict[str, Any] = {
            "model": bundle.manifest.name,
            "version": bundle.manifest.version,
            "envelopes": len(images),
            "clients": clients,
            "seconds": seconds,
            "cpus": os.cpu_count(),
            "servers": {},
        }
        for kind in servers:
            port = free_port()
            env = {
                "EC_CLOUD__BUNDLE": str(Path(bundle.path).resolve()),
                "EC_CLOUD__HOST": "127.0.0.1",
                "EC_CLOUD__PORT": str(port),
                "EC_CLOUD__TOKEN_STORE": str(root / "tokens.db"),
                "EC_CLOUD__DATABASE_URL": f"sqlite:///{root / kind / 'cloud.db'}",
                "EC_CLOUD__BLOB_DIR": str(root / kind / "blobs"),
                "EC_CLOUD__TLS_CERT": str(pki.broker_cert),
                "EC_CLOUD__TLS_KEY": str(pki.broker_key),
            }
            server = start_server(kind, env, port, root / f"{kind}.log", workers, threads)
            try:
                result = run_clients(port, pki.ca_cert, token, requests_file, clients, seconds)
            finally:
                result_code = stop_server(server)
            result["exit_code"] = result_code
            if kind == "gunicorn":
                result |= {"workers": workers, "threads": threads, "worker_class": "gthread"}
            report["servers"][kind] = result
        rates = {kind: result["requests_per_s"] for kind, result in report["servers"].items()}
        if rates.get("werkzeug") and "gunicorn" in rates:
            report["speedup"] = round(rates["gunicorn"] / rates["werkzeug"], 2)
    return report


def format_cloud_report(report: dict[str, Any]) -> str:
    lines = [
        f"cloud /v1/infer over HTTPS: {report['clients']} keep-alive clients for {report['seconds']:g} s "
        f"each server, {report['model']} v{report['version']}, {report['cpus']} CPUs",
        f"{'server':<16} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}",
    ]
    for kind, r in report["servers"].items():
        name = f"gunicorn ({r['workers']}×{r['threads']})" if kind == "gunicorn" else kind
        lines.append(
            f"{name:<16} {r['requests_per_s']:>11.1f} {r['p50_ms'] or 0:>8.2f} {r['p99_ms'] or 0:>8.2f} "
            f"{r['errors']:>7d}"
        )
    if "speedup" in report:
        lines.append(f"gunicorn serves {report['speedup']:.1f}× the development server's requests per second")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- the client
def _read_requests(path: Path) -> list[bytes]:
    data = path.read_bytes()
    bodies, at = [], 0
    while at < len(data):
        (size,) = _LENGTH.unpack_from(data, at)
        bodies.append(data[at + 4 : at + 4 + size])
        at += 4 + size
    return bodies


def client(job: dict[str, Any]) -> dict[str, Any]:
    """One keep-alive HTTPS connection posting the requests in turn until the time is up."""
    bodies = _read_requests(Path(job["requests"]))
    context = ssl.create_default_context(cafile=job["ca"])
    headers = {"Authorization": f"Bearer {job['token']}", "Content-Type": wire.CONTENT_TYPE}
    connection = http.client.HTTPSConnection("127.0.0.1", job["port"], context=context, timeout=30)
    latencies: list[float] = []
    errors = reconnects = 0
    i = int(job["offset"]) * 7

    def post(body: bytes) -> bool:
        nonlocal connection, reconnects
        try:
            connection.request("POST", wire.ROUTE_INFER, body, headers)
            response = connection.getresponse()
            response.read()
            return response.status == 200
        except (OSError, http.client.HTTPException):
            connection.close()
            connection = http.client.HTTPSConnection("127.0.0.1", job["port"], context=context, timeout=30)
            reconnects += 1
            return False

    for _ in range(WARMUP):
        post(bodies[i % len(bodies)])
        i += 1
    time.sleep(max(0.0, job["start_at"] - time.time()))
    deadline = time.perf_counter() + float(job["seconds"])
    while (started := time.perf_counter()) < deadline:
        ok = post(bodies[i % len(bodies)])
        i += 1
        if ok:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            errors += 1
    connection.close()
    return {"latencies_ms": latencies, "errors": errors, "reconnects": reconnects}


def _run(args: Any) -> int:
    from edgecascade.device_sdk.model.bundle import load_bundle
    from edgecascade.tools.report import print_report
    from edgecascade.training.data import load_fashion_mnist

    images = load_fashion_mnist().x_test[: args.n]
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    report = bench_cloud(
        load_bundle(args.model, tiers=("device", "gateway", "cloud")),
        images,
        clients=args.clients,
        seconds=args.seconds,
        workers=args.workers,
        threads=args.threads,
        servers=servers,
    )
    print_report(format_cloud_report(report), report, args.report)
    return 0


def register(bench: Any, default_model: str) -> None:
    """Add ``cloud`` to ``edgecascade bench``."""
    p = bench.add_parser("cloud", help="/v1/infer requests/s and latency: gunicorn vs the development server")
    p.add_argument("--model", default=default_model, help="bundle directory (default %(default)s)")
    p.add_argument("--report", help="write the JSON report here")
    p.add_argument("--clients", type=int, default=4, help="client processes (default %(default)s)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed seconds per server (%(default)s)")
    p.add_argument("--n", type=int, default=256, help="distinct request envelopes (default %(default)s)")
    p.add_argument("--workers", type=int, help="gunicorn workers (default: one per CPU)")
    p.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker (%(default)s)")
    p.add_argument("--servers", default=",".join(SERVERS), help="which, in order (default %(default)s)")
    p.set_defaults(func=_run)


if __name__ == "__main__":
    print(json.dumps(client(json.load(sys.stdin))))
