"""``edgecascade broker config``, the broker config and the ACL text (the live broker: tests/integration)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import ConfigError
from edgecascade.tools.broker import MAX_PACKET_BYTES, acl_text, mosquitto_conf, write_broker_config
from edgecascade.tools.certs import Pki, init_pki, issue_device
from edgecascade.tools.cli import main

ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki = init_pki(tmp_path_factory.mktemp("site") / "pki")
    issue_device(pki.root, "cam-01")
    return pki


def test_a_device_gets_exactly_its_own_three_topics() -> None:
    acl = acl_text(["gateway"], observers=["auditor"]).splitlines()
    patterns = [line for line in acl if line.startswith("pattern")]
    assert patterns == [
        "pattern write ec/v1/dev/%u/req",
        "pattern write ec/v1/dev/%u/hx",
        "pattern read ec/v1/dev/%u/res",
        "pattern read ec/v1/models/#",  # everyone reads the model announcements
    ]
    gateway = acl[acl.index("user gateway") + 1 : acl.index("", acl.index("user gateway"))]
    assert gateway[:3] == [
        "topic read ec/v1/dev/+/req",
        "topic read ec/v1/dev/+/hx",  # hard-example uploads, relayed
        "topic write ec/v1/dev/+/res",
    ]
    assert not any("$share" in line or "readwrite" in line for line in acl)  # nothing broader than needed
    assert acl[acl.index("user auditor") + 1] == "topic read #"
    assert acl[acl.index("user cloud") + 1] == "topic write ec/v1/models/#"  # only announcers write them
    assert not any(
        line.endswith("ec/v1/models/#") and "write" in line for line in acl[: acl.index("user cloud")]
    )


def test_the_throw_away_broker_config(pki: Pki, tmp_path: Path) -> None:
    conf = mosquitto_conf(pki, 8883, tmp_path / "acl", user=ME).splitlines()
    for line in (
        f"user {ME}",
        "listener 8883 127.0.0.1",
        "tls_version tlsv1.2",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
        "set_tcp_nodelay true",
        f"max_packet_size {MAX_PACKET_BYTES}",
        "persistence false",
        f"acl_file {tmp_path / 'acl'}",
    ):
        assert line in conf
    assert "use_username_as_clientid true" not in conf  # tests run several processes per identity
    default = mosquitto_conf(pki, 8883, tmp_path / "acl").splitlines()
    assert not any(line.startswith("user ") for line in default)  # no user unless asked


def test_broker_config_writes_a_production_broker(pki: Pki, tmp_path: Path) -> None:
    out = tmp_path / "broker"
    argv = ["broker", "config", "--pki", str(pki.root), "--out", str(out), "--port", "18883", "--user", ME]
    assert main(argv) == 0
    conf = (out / "mosquitto.conf").read_text().splitlines()
    for line in (
        "listener 18883",  # every interface unless --host
        f"user {ME}",
        "use_username_as_clientid true",  # no client can take over another's connection
        "persistence true",
        f"persistence_location {out.resolve() / 'data'}/",
        f"acl_file {out.resolve() / 'acl'}",
        f"cafile {out.resolve() / 'ca.pem'}",
        f"keyfile {out.resolve() / 'broker.key'}",
    ):
        assert line in conf
    assert "user root" not in conf or ME == "root"
    assert (out / "ca.pem").read_bytes() == pki.ca_cert.read_bytes()
    assert (out / "broker.key").read_bytes() == pki.broker_key.read_bytes()
    assert stat.S_IMODE((out / "broker.key").stat().st_mode) == 0o600
    assert "user gateway" in (out / "acl").read_text() and "user cloud" in (out / "acl").read_text()

    assert main(argv) == 2  # refuses to overwrite
    assert main([*argv, "--force", "--host", "127.0.0.1", "--gateway", "gw-a", "--gateway", "gw-b"]) == 0
    assert "listener 18883 127.0.0.1" in (out / "mosquitto.conf").read_text().splitlines()
    acl = (out / "acl").read_text().splitlines()
    assert "user gw-a" in acl and "user gw-b" in acl and "user gateway" not in acl


def test_broker_config_errors(pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="certs init"):
        write_broker_config(Pki(tmp_path / "nothing"), tmp_path / "out")
    with pytest.raises(ConfigError, match="--port"):
        write_broker_config(pki, tmp_path / "out", port=70000)
    with pytest.raises(SystemExit) as exit_:
        main(["broker", "config", "--pki", str(pki.root)])  # --out is required
    assert exit_.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user may enter (pytest's own are 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="edgecascade-broker-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands the files to the broker's user")
def test_as_root_the_files_go_to_the_brokers_user_who_must_reach_them(
    pki: Pki, tmp_path: Path, open_dir: Path
) -> None:
    try:
        broker_user = pwd.getpwnam("mosquitto")
    except KeyError:
        pytest.skip("no mosquitto user here")
    hidden = tmp_path / "private"
    hidden.mkdir(mode=0o700)
    with pytest.raises(ConfigError, match="cannot enter"):
        write_broker_config(pki, hidden / "broker")  # mosquitto would fail to read its files
    with pytest.raises(ConfigError, match="no user"):
        write_broker_config(pki, open_dir / "x", user="no-such-user-here")
    files = write_broker_config(pki, open_dir / "broker")
    assert "user mosquitto" in files.conf.read_text().splitlines()
    for path in (files.conf, files.acl, files.pki.broker_key, files.data):
        assert path.stat().st_uid == broker_user.pw_uid
