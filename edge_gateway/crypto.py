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
:class:`~.replay_store.ReplayStore` the windows survive a restart; with a
:class:`~.shared_replay.SharedReplayStore` they are shared by a share group of gateways,
and the numbers of a micro-batch are judged in one transaction (:meth:`GatewayCrypto.open_requests`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
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
from edgecascade.edge_gateway.replay import WINDOW, Refusal, ReplayWindows
from edgecascade.edge_gateway.replay_store import LocalWindows, ReplayStore

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
    µs of their clock). ``windows``: where the replay windows are kept; by default in this
    process, ``window`` numbers wide, their high-water marks in ``store`` (if given) so
    they survive a restart (:class:`~.replay_store.LocalWindows`), or a
    :class:`~.shared_replay.SharedReplayStore` that a share group of gateways shares.
    """

    def __init__(
        self,
        keyring: GatewayKeyring,
        *,
        required: bool = True,
        window: int = WINDOW,
        max_ahead: float = MAX_AHEAD,
        store: ReplayStore | None = None,
        windows: ReplayWindows | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.required = required
        self.window = window
        self.max_ahead = max_ahead
        self.windows = windows if windows is not None else LocalWindows(window, store)
        self._clock = clock

    def open_request(self, envelope: wire.Envelope) -> tuple[wire.Envelope, int | None]:
        """The plain envelope of a request and the key id it used (None if it came plaintext).

        Raises a :class:`~edgecascade.device_sdk.errors.CryptoError` for a plaintext request
        when encryption is required, an unknown key, a forged or altered message, or a
        sequence number outside the device's window (a ReplayError whose ``answer`` is the
        sealed refusal to send back); a StorageError if the replay windows cannot be kept.
        """
        (opened,) = self.open_requests([envelope])
        if isinstance(opened, Exception):
            raise opened
        return opened

    def open_requests(
        self, envelopes: Sequence[wire.Envelope]
    ) -> list[tuple[wire.Envelope, int | None] | Exception]:
        """:meth:`open_request` for a micro-batch: per envelope, what it returns or what it raises.

        Every envelope is authenticated first; the sequence numbers of those that did are
        then judged together (one transaction of a shared store), each on its own.
        """
        out: dict[int, tuple[wire.Envelope, int | None] | Exception] = {}
        authentic: list[tuple[int, wire.Envelope, int, PairKeys]] = []
        for i, envelope in enumerate(envelopes):
            try:
                header = envelope.header
                if not header.flags & wire.FLAG_ENCRYPTED:
                    if self.required:
                        raise NotEncryptedError(
                            f"unencrypted request from {header.device_id!r}: encryption is required"
                        )
                    out[i] = (envelope, None)
                    continue
                key_id = key_id_of(envelope)
                keys = self.keyring.get(header.device_id, key_id)
                plain = open_sealed(envelope, keys.to_gateway)  # only an authentic message is judged
                authentic.append((i, plain, key_id, keys))
            except Exception as exc:  # this envelope fails alone
                out[i] = exc
        if authentic:
            now = int(self._clock() * 1_000_000)
            numbers = [(plain.header.device_id, plain.header.seq) for _, plain, _, _ in authentic]
            verdicts = self.windows.accept_many(numbers, now, int(self.max_ahead * 1_000_000))
            for (i, plain, key_id, keys), verdict in zip(authentic, verdicts, strict=True):
                if verdict is None:
                    out[i] = (plain, key_id)
                elif isinstance(verdict, Refusal):
                    out[i] = _sealed_refusal(plain, keys, key_id, verdict)
                else:
                    out[i] = verdict
        return [out[i] for i in range(len(envelopes))]

    def seal_reply(self, reply: wire.Envelope, key_id: int) -> bytes:
        """Encrypt a reply envelope to its device under ``key_id`` (the request's)."""
        keys = self.keyring.get(reply.header.device_id, key_id)
        return seal(reply, keys.to_device, key_id)

    def close(self) -> None:
        """Close where the replay windows are kept."""
        self.windows.close()


def _sealed_refusal(plain: wire.Envelope, keys: PairKeys, key_id: int, refusal: Refusal) -> ReplayError:
    """The window's refusal, its ``answer`` the ERROR reply sealed for the device: where to continue."""
    reply = wire.Envelope(
        plain.header.reply(wire.MessageType.ERROR),
        wire.encode_error(
            wire.ErrorCode.UNAUTHORIZED, resync_message(refusal.next_seq, refusal.limit, str(refusal.error))
        ),
    )
    refusal.error.answer = seal_envelope(reply, keys.to_device, key_id)
    return refusal.error


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
    replay_shared: str = "",
) -> GatewayCrypto:
    """The gateway's crypto from its private key file and a directory of device public keys.

    With ``replay_shared`` (a database URL) the replay windows are the share group's, kept
    whole there (``replay_store`` is then not used); else with ``replay_store`` (an SQLite
    file, made if missing) this gateway's windows survive a restart.
    """
    keyring = GatewayKeyring(
        load_x25519_private(Path(private_key)),
        gateway_name,
        Path(device_keys),
        rescan_interval=rescan_interval,
    )
    logger.info("loaded %d device keys from %s", len(keyring), device_keys)
    if replay_shared:
        from edgecascade.edge_gateway.shared_replay import SharedReplayStore  # SQLAlchemy: only when shared

        shared = SharedReplayStore(replay_shared, window)
        logger.info("replay windows shared in %s", shared.url)
        return GatewayCrypto(keyring, required=required, window=window, max_ahead=max_ahead, windows=shared)
    store = ReplayStore(replay_store) if replay_store is not None else None
    return GatewayCrypto(keyring, required=required, window=window, max_ahead=max_ahead, store=store)
