"""``edgecascade sign`` and ``edgecascade tokens`` through the real entry point."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgecascade.cloud_service import tokens
from edgecascade.device_sdk.errors import EXIT_CONFIG, SignatureError
from edgecascade.device_sdk.model.bundle import load_bundle
from edgecascade.device_sdk.model.signing import SIGNATURE, generate_signing_key
from edgecascade.tools import security_cli
from edgecascade.tools.cli import main
from tests.fake_bundle import make_bundle


def test_tokens_create_prints_the_token_once_and_list_never_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "tokens.db"
    assert main(["tokens", "create", "--scope", "gateway", "--name", "gw1", "--store", str(store)]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert token.startswith("ec_") and len(out.splitlines()) == 1 and "shown only now" in err
    assert tokens.TokenStore(store).authenticate(token).name == "gw1"

    assert main(["tokens", "list", "--store", str(store)]) == 0
    listing = capsys.readouterr().out
    token_id, secret = token.removeprefix("ec_").split(".")
    assert token_id in listing and "gateway" in listing and "active" in listing
    assert secret not in listing

    assert main(["tokens", "revoke", token_id, "--store", str(store)]) == 0
    assert main(["tokens", "revoke", token_id, "--store", str(store)]) == 1
    assert main(["tokens", "list", "--store", str(store)]) == 0
    assert "revoked" in capsys.readouterr().out


def test_tokens_store_comes_from_the_cloud_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "from-env.db"
    monkeypatch.setenv("EC_CLOUD__TOKEN_STORE", str(store))
    assert main(["tokens", "create", "--scope", "enroll", "--name", "cam-01", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    info = tokens.TokenStore(store).authenticate(token)
    assert info.scope == "enroll" and info.single_use and info.expires == pytest.approx(info.created + 60)


def test_tokens_create_rejects_a_bad_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["tokens", "create", "--scope", "device", "--name", "a b", "--store", str(tmp_path / "t.db")]
    assert main(args) == EXIT_CONFIG
    assert "name must be" in capsys.readouterr().err


def test_cli_scopes_are_the_stores() -> None:
    assert security_cli.SCOPES == tokens.SCOPES


def test_sign_writes_a_signature_the_public_key_verifies(tmp_path: Path) -> None:
    private, public = generate_signing_key(tmp_path / "keys")
    bundle = make_bundle(tmp_path / "bundle")
    with pytest.raises(SignatureError):
        load_bundle(bundle, public_key=public)
    assert main(["sign", str(bundle), "--key", str(private)]) == 0
    assert (bundle / SIGNATURE).is_file()
    assert load_bundle(bundle, public_key=public).manifest.version == 1
    assert main(["sign", str(bundle), "--key", str(tmp_path / "missing.key")]) == EXIT_CONFIG
