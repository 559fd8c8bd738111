"""The gateways' share group: named after their payload key, so no device can name it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from edgecascade.device_sdk import wire
from edgecascade.edge_gateway.config import CryptoSettings, GatewayConfig, GatewaySettings
from edgecascade.edge_gateway.share import gateway_subscriptions, share_group
from edgecascade.tools.certs import init_pki


def test_the_group_is_secret_stable_and_shared_by_the_gateways_of_one_key(tmp_path: Path) -> None:
    site, other = init_pki(tmp_path / "site"), init_pki(tmp_path / "other")
    group = share_group(site.gateway_x25519_key)
    assert re.fullmatch(r"gw-[0-9a-f]{32}", group)  # one topic level, 128 bits
    assert share_group(site.gateway_x25519_key) == group  # every gateway holding the key: one group
    assert share_group(other.gateway_x25519_key) != group
    public = site.gateway_x25519_pub.read_bytes()
    assert (
        group.encode() not in public and group[3:] not in public.hex()
    )  # not derivable from what devices hold

    config = GatewayConfig(
        crypto=CryptoSettings(private_key=site.gateway_x25519_key, device_keys=site.device_keys)
    )
    assert gateway_subscriptions(config) == (
        f"$share/{group}/ec/v1/dev/+/req",
        f"$share/{group}/ec/v1/dev/+/hx",
    )
    alone = dataclasses.replace(config, gateway=GatewaySettings(shared_subscription=False))
    assert gateway_subscriptions(alone) == ("ec/v1/dev/+/req", "ec/v1/dev/+/hx")


def test_without_payload_keys_the_public_group_is_used_with_a_warning(caplog) -> None:
    assert share_group(None) == wire.GATEWAY_SHARE_GROUP
    assert "any device may join" in caplog.text
