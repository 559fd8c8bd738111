"""The gateways' side of end-to-end payload encryption: device keys, opening requests, sealing replies.

:class:`GatewayKeyring` derives the AES-GCM pair keys of every device from the gateways'
X25519 private key and a directory of device public keys (``<device id>.k<key id>.pub``,
written by ``edgecascade certs device`` or by the cloud's enrolment), rescanned for new
devices. :class:`GatewayCrypto` opens a request envelope (checking the device's replay
window, :mod:`.replay`) and seals the reply under the key id the request used. The
scheme itself, and the device's side, are :mod:`edgecascade.device_sdk.wire.crypto`.

A request is authenticated before its sequence number is judged. One that authenticates
but falls outside the device's window (already seen, too old, or further ahead than
``max_ahead`` seconds over this gateway's clock) is refused without moving the window,
and the refusal carries, as its ``answer``, an ERROR reply sealed for the device that says
where its numbers may continue (:mod:`edgecascade.device_sdk.wire.sequence`): a device is
never locked out by its window, and no number is ever accepted twice. With a
:class:`~.replay_store.ReplayStore` the windows survive a restart.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from edgecascade.device_sdk import wire
from edgecascade.device_sdk.errors import ConfigError, NotEncryptedError, ReplayError, UnknownKeyError
from edgecascade.device_sdk.wire.crypto import (
    DEFAULT_GATEWAY_NAME,
    PUBLIC_KEY_RE,
    PairKeys,
    gateway_pair_keys,
    key_id_of,
    load_x25519_private,
    load_x25519_public,
    open_sealed,
    seal,
    seal_envelope,
)
from edgecascade.device_sdk.wire.sequence import resync_message
from edgecascade.edge_gateway.replay import WINDOW, ReplayWindow
from edgecascade.edge_gateway.replay_store import ReplayStore

logger = logging.getLogger(__name__)

MAX_AHEAD = 60.0  # seconds a device's (µs clock) sequence numbers may run ahead of the gateway's clock


class GatewayKeyring:
    """Pair keys per device and key id, from the gateways' private key and device public keys.

    With a ``directory`` (files ``<device id>.k<key id>.pub``), a lookup that misses rescans
    it, at most once per ``rescan_interval`` seconds: newly registered devices are served
    without a restart, and removing a file retires that key generation.
    """

    def __init__(
        self,
        private: X25519PrivateKey,
        gateway_name: str = DEFAULT_GATEWAY_NAME,
        directory: Path | None = None,
        *,
        rescan_interval: float = 5.0,
    ) -> None:
        self._private = private
        self.gateway_name = gateway_name
        self.directory = Path(directory) if directory is not None else None
        self.rescan_interval = rescan_interval
        self._keys: dict[tuple[str, int], PairKeys] = {}
        self._files: dict[tuple[str, int], bytes] = {}
        self._lock = threading.Lock()
        self._scan_lock = threading.Lock()  # one rescan at a time; lookups only wait for _lock
        self._scanned = float("-inf")
        if self.directory is not None:
            if not self.directory.is_dir():
                raise ConfigError(f"device key directory {self.directory} does not exist")
            self.rescan()

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, device_id: str, key_id: int, public: X25519PublicKey) -> None:
        """Register a device's public key of generation ``key_id``."""
        keys = gateway_pair_keys(self._private, public, device_id, key_id, self.gateway_name)
        with self._lock:
            self._keys[(device_id, key_id)] = keys

    def get(self, device_id: str, key_id: int) -> PairKeys:
        """The keys for a device and key id, or UnknownKeyError."""
        with self._lock:
            keys = self._keys.get((device_id, key_id))
            due = self.directory is not None and time.monotonic() - self._scanned >= self.rescan_interval
        if keys is None and due:
            self.rescan()
            with self._lock:
                keys = self._keys.get((device_id, key_id))
        if keys is None:
            raise UnknownKeyError(f"no key {key_id} for device {device_id!r}")
        return keys

    def rescan(self) -> int:
        """Load the directory again: add new public keys, drop removed ones; returns the count."""
        assert self.directory is not None
        with self._scan_lock:
            return self._rescan(self.directory)

    def _rescan(self, directory: Path) -> int:
        seen: dict[tuple[str, int], bytes] = {}
        for path in sorted(directory.glob("*.pub")):
            match = PUBLIC_KEY_RE.fullmatch(path.name)
            if match is None:
                logger.warning("ignoring %s: not named <device id>.k<key id>.pub", path.name)
                continue
            entry = (match.group("device"), int(match.group("key_id")))
            try:
                data = path.read_bytes()
                if self._files.get(entry) != data:
                    self.add(*entry, load_x25519_public(path))
            except (OSError, ConfigError) as exc:
                logger.warning("ignoring device key %s: %s", path.name, exc)
                continue
            seen[entry] = data
        with self._lock:
            for gone in set(self._keys) - set(seen):
                del self._keys[gone]
            self._files = seen
            self._scanned = time.monotonic()
            return len(self._keys)


class GatewayCrypto:
    """The gateway's opening of requests (with replay windows) and sealing of replies.

    ``max_ahead``: seconds a sequence number may run ahead of ``clock`` (devices number in
    µs of their clock); ``store``: where windows' high-water marks survive a restart.
    """

    def __init__(
        self,
        keyring: GatewayKeyring,
        *,
        required: bool = True,
        window: int = WINDOW,
        max_ahead: float = MAX_AHEAD,
        store: ReplayStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.required = required
        self.window = window
        self.max_ahead = max_ahead
        self.store = store
        self._clock = clock
        self._windows: dict[str, ReplayWindow] = {}
        self._marks: dict[str, int] = {}  # per device: numbers up to here are reserved in the store
        self._lock = threading.Lock()

    def open_request(self, envelope: wire.Envelope) -> tuple[wire.Envelope, int | None]:
        """The plain envelope of a request and the key id it used (None if it came plaintext).

        Raises a :class:`~edgecascade.device_sdk.errors.CryptoError` for a plaintext request
        when encryption is required, an unknown key, a forged or altered message, or a
        sequence number outside the device's window (a ReplayError whose ``answer`` is the
        sealed refusal to send back); a StorageError if the replay store cannot be written.
        """
        header = envelope.header
        if not header.flags & wire.FLAG_ENCRYPTED:
            if self.required:
                raise NotEncryptedError(
                    f"unencrypted request from {header.device_id!r}: encryption is required"
                )
            return envelope, None
        key_id = key_id_of(envelope)
        keys = self.keyring.get(header.device_id, key_id)
        plain = open_sealed(envelope, keys.to_gateway)  # only an authentic message is judged or answered
        refused = self._accept(header.device_id, header.seq)
        if refused is not None:
            error, next_seq, limit = refused
            refusal = wire.Envelope(
                plain.header.reply(wire.MessageType.ERROR),
                wire.encode_error(wire.ErrorCode.UNAUTHORIZED, resync_message(next_seq, limit, str(error))),
            )
            error.answer = seal_envelope(refusal, keys.to_device, key_id)
            raise error
        return plain, key_id

    def seal_reply(self, reply: wire.Envelope, key_id: int) -> bytes:
        """Encrypt a reply envelope to its device under ``key_id`` (the request's)."""
        keys = self.keyring.get(reply.header.device_id, key_id)
        return seal(reply, keys.to_device, key_id)

    def close(self) -> None:
        """Close the replay store, if any."""
        if self.store is not None:
            self.store.close()

    def _accept(self, device_id: str, seq: int) -> tuple[ReplayError, int, int] | None:
        """Record ``seq`` in the device's window (reserved in the store first); None if accepted.

        A refusal leaves the window as it was and says where the device may continue: every
        number from ``next_seq`` (the window's, or the clock's for a window still empty) up
        to ``limit``.
        """
        with self._lock:
            window = self._window(device_id)
            now = int(self._clock() * 1_000_000)
            limit = window.limit(now, int(self.max_ahead * 1_000_000))
            try:
                window.check(seq, limit)
            except ReplayError as exc:
                next_seq = window.next_seq
                return exc, now if next_seq is None else next_seq, limit
            if self.store is not None and seq > self._marks.get(device_id, -1):
                self._marks[device_id] = self.store.reserve_above(device_id, seq)
            window.accept(seq, limit)
            return None

    def _window(self, device_id: str) -> ReplayWindow:
        """The device's window; after a restart it starts at the store's mark."""
        window = self._windows.get(device_id)
        if window is None:
            floor = self.store.mark(device_id) if self.store is not None else None
            window = self._windows[device_id] = ReplayWindow(self.window, floor)
            if floor is not None:
                self._marks[device_id] = floor
        return window


def load_gateway_crypto(
    private_key: str | Path,
    device_keys: str | Path,
    *,
    gateway_name: str = DEFAULT_GATEWAY_NAME,
    required: bool = True,
    window: int = WINDOW,
    rescan_interval: float = 5.0,
    max_ahead: float = MAX_AHEAD,
    replay_store: str | Path | None = None,
) -> GatewayCrypto:
    """The gateway's crypto from its private key file and a directory of device public keys.

    With ``replay_store`` (an SQLite file, made if missing) the replay windows survive a restart.
    """
    keyring = GatewayKeyring(
        load_x25519_private(Path(private_key)),
        gateway_name,
        Path(device_keys),
        rescan_interval=rescan_interval,
    )
    logger.info("loaded %d device keys from %s", len(keyring), device_keys)
    store = ReplayStore(replay_store) if replay_store is not None else None
    return GatewayCrypto(keyring, required=required, window=window, max_ahead=max_ahead, store=store)
