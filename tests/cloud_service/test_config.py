"""cloud.toml: paths relative to the file, sqlite URLs too, every missing input listed at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecascade.cloud_service.config import load_cloud_config
from edgecascade.device_sdk.errors import ConfigError


def test_paths_and_sqlite_urls_in_the_file_are_relative_to_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    (site / "pki").mkdir(parents=True)
    (site / "pki" / "cloud-signing.pub").write_text("key")
    path = site / "cloud.toml"
    path.write_text(
        '[cloud]\nbundle = "model"\nverify_key = "pki/cloud-signing.pub"\n'
        'device_keyring = "pki/device-keys"\ndatabase_url = "sqlite:///state/cloud.db"\n'
        '[retrain]\njobs_dir = "/srv/jobs"\n'
    )
    monkeypatch.chdir(tmp_path)
    config = load_cloud_config(path, env={"EC_CLOUD__BLOB_DIR": "blobs"})
    root = site.resolve()
    assert config.cloud.bundle == root / "model"
    assert config.cloud.verify_key == root / "pki" / "cloud-signing.pub"
    assert config.cloud.device_keyring == root / "pki" / "device-keys"
    assert config.cloud.database_url == f"sqlite:///{root / 'state' / 'cloud.db'}"
    assert config.retrain.jobs_dir == Path("/srv/jobs")
    assert config.cloud.blob_dir == Path("blobs")  # from the environment: the working directory's
    assert config.cloud.token_store == Path("state/tokens.db")  # a default: the working directory's


@pytest.mark.parametrize(
    "url",
    ["sqlite:////var/lib/cloud.db", "sqlite:///:memory:", "postgresql://db.example/cloud"],
)
def test_other_database_urls_stay_as_written(tmp_path: Path, url: str) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(f'[cloud]\ndatabase_url = "{url}"\n')
    assert load_cloud_config(path, env={}).cloud.database_url == url


def test_every_missing_input_is_listed_at_once(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(
        '[cloud]\nverify_key = "pki/cloud-signing.pub"\ngateway_public_key = "pki/gateway-x25519.pub"\n'
        'tls_cert = "pki/broker.pem"\ntls_key = "pki/broker.key"\n'
        '[registry]\nsigning_key = "pki/cloud-signing.key"\n'
        '[retrain]\ndata = "data/original.npz"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_cloud_config(path, env={})
    assert {p.split(":")[0] for p in info.value.problems} == {
        "cloud.verify_key",
        "cloud.gateway_public_key",
        "cloud.tls_cert",
        "cloud.tls_key",
        "registry.signing_key",
        "retrain.data",
    }


def test_federated_settings_are_checked_and_the_environment_overrides_them(tmp_path: Path) -> None:
    path = tmp_path / "cloud.toml"
    path.write_text(
        '[federated]\nstrategy = "mean"\ndownlink = "int4"\ncompression = "zip"\nmin_fraction = 0\n'
        "tolerance = -1\nmin_gain = 101\n"
    )
    with pytest.raises(ConfigError) as info:
        load_cloud_config(path, env={})
    assert sorted(p.split(" must")[0] for p in info.value.problems) == [
        "federated.compression",
        "federated.downlink",
        "federated.min_fraction",
        "federated.min_gain",
        "federated.strategy",
        "federated.tolerance",
    ]
    path.write_text('[federated]\ndownlink = "float32"\n')
    assert load_cloud_config(path, env={}).federated.downlink == "float32"
    assert load_cloud_config(path, env={"EC_FEDERATED__DOWNLINK": "float16"}).federated.downlink == "float16"
    path.write_text("[federated]\n")
    assert load_cloud_config(path, env={}).federated.downlink == "float16"  # the default
