"""The gateways' MQTT shared-subscription group: a name only the gateways can know.

Gateways scale out by subscribing to every device's requests (and hard-example uploads)
as one *share group* (``$share/<group>/ec/v1/dev/+/req``): the broker hands each message
to one member. Mosquitto 2.0 grants any client any subscription (its ACL file is checked
when a message is delivered, not when a client subscribes), so a device that joins the
gateways' group is handed its turn of everyone's requests; the broker then refuses to
deliver them to it and they are lost. A group named in the open (``gateways``) lets any
device certificate take half a site's traffic down.

So the group is named after a secret the gateways of one group already share and the
devices never see: the gateways' X25519 payload key (``gateway-x25519.key``). A device
may join any group it can name; it cannot name this one. Gateways without payload keys
fall back to the public name :data:`~edgecascade.device_sdk.wire.GATEWAY_SHARE_GROUP`,
with a warning.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.wire.crypto import load_x25519_private
from edgecascade.edge_gateway.config import GatewayConfig

logger = logging.getLogger(__name__)

_LABEL = b"edgecascade/v1 mqtt share group"


def share_group(private_key: Path | None) -> str:
    """The share group of the gateways holding ``private_key``: ``gw-`` and 128 bits of an HMAC."""
    if private_key is None:
        logger.warning(
            "no crypto.private_key: the gateways share the public group %r, which any device "
            "may join to make the broker drop requests",
            wire.GATEWAY_SHARE_GROUP,
        )
        return wire.GATEWAY_SHARE_GROUP
    raw = load_x25519_private(private_key).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return "gw-" + hmac.new(raw, _LABEL, hashlib.sha256).hexdigest()[:32]


def gateway_subscriptions(config: GatewayConfig) -> tuple[str, str]:
    """What a gateway subscribes to: every device's requests, and every device's uploads."""
    req, hx = wire.gateway_subscriptions(shared=False)
    if not config.gateway.shared_subscription:
        return req, hx
    group = share_group(config.crypto.private_key)
    return f"$share/{group}/{req}", f"$share/{group}/{hx}"
