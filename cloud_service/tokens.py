"""Bearer tokens of devices, gateways and operators, stored hashed in SQLite.

A token reads ``ec_<token_id>.<secret>``: the id finds the row, the secret is checked
against ``scrypt(secret, per-token salt)`` with a constant-time compare, and the secret
itself is never written anywhere. Each token has one scope:

``device``   a device calling the cloud directly (inference, later uploads)
``gateway``  a gateway forwarding for its devices
``admin``    an operator (metrics, model promotion and rollback)
``enroll``   a one-time, expiring token that lets one named device enrol

SQLite rather than a JSON file because several server workers share the store: spending
a single-use enrolment token is one conditional ``UPDATE``, atomic across processes,
where a JSON file would need its own cross-process locking. A verified secret is
remembered in memory (keyed, per process) so scrypt runs once per token and process,
not on every request; revocation and expiry are still read from the store every time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgecascade.device_sdk.errors import AuthError, ConfigError
from edgecascade.device_sdk.learning.outbox import immediate_transaction

SCOPES = ("device", "gateway", "admin", "enroll")
PREFIX = "ec_"
ENROLL_TTL = 24 * 3600.0  # default lifetime of an enrolment token, seconds
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~16 MiB and tens of ms: once per token and process
_KDF = "scrypt$16384$8$1"
_TOKEN_RE = re.compile(r"^ec_([0-9a-f]{16})\.([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL,
    kdf TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    created REAL NOT NULL,
    expires REAL,
    single_use INTEGER NOT NULL DEFAULT 0,
    used REAL,
    revoked REAL
)
"""


@dataclass(frozen=True)
class TokenInfo:
    """What the store knows about a token, without its secret or hash."""

    token_id: str
    name: str
    scope: str
    created: float
    expires: float | None = None
    single_use: bool = False
    used: float | None = None
    revoked: float | None = None

    def state(self, now: float | None = None) -> str:
        """``active``, ``revoked``, ``used`` or ``expired``."""
        now = time.time() if now is None else now
        if self.revoked is not None:
            return "revoked"
        if self.used is not None:
            return "used"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"


def _hash(secret: str, salt: bytes) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, dklen=32, **_SCRYPT)


class TokenStore:
    """The token table in one SQLite file (created 0600 in a 0700 directory when missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # never world-readable
            db = self._connect()
            try:
                db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer
                db.execute(_SCHEMA)
            finally:
                db.close()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"cannot open the token store {self.path}: {exc}") from None
        self._local = threading.local()
        self._cache_key = secrets.token_bytes(32)
        self._verified: dict[str, bytes] = {}  # token id -> keyed digest of its verified secret

    # ------------------------------------------------------------------- storage helpers
    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None)
        db.row_factory = sqlite3.Row
        return db

    def _db(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = self._connect()
        return db

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed on success, rolled back on error."""
        with immediate_transaction(self._db()) as db:
            yield db

    @staticmethod
    def _info(row: sqlite3.Row) -> TokenInfo:
        return TokenInfo(
            token_id=row["id"],
            name=row["name"],
            scope=row["scope"],
            created=row["created"],
            expires=row["expires"],
            single_use=bool(row["single_use"]),
            used=row["used"],
            revoked=row["revoked"],
        )

    # ------------------------------------------------------------------------ public API
    def create(
        self,
        scope: str,
        name: str,
        *,
        ttl: float | None = None,
        single_use: bool | None = None,
        db: sqlite3.Connection | None = None,
    ) -> tuple[str, TokenInfo]:
        """A new token: ``(token, info)``. The token is returned once and is not kept.

        Enrolment tokens are single use and expire after :data:`ENROLL_TTL` unless ``ttl``
        says otherwise; other scopes do not expire unless ``ttl`` is given. Pass ``db`` to
        create it inside a :meth:`transaction`.
        """
        problems = []
        if scope not in SCOPES:
            problems.append(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if not _NAME_RE.match(name):
            problems.append(f"name must be 1-64 of A-Z a-z 0-9 _ . - (not starting with '.'), got {name!r}")
        if ttl is not None and not ttl > 0:
            problems.append(f"ttl must be > 0 seconds, got {ttl}")
        if problems:
            raise ConfigError(problems)
        if scope == "enroll":
            ttl = ENROLL_TTL if ttl is None else ttl
            single_use = True if single_use is None else single_use
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        now = time.time()
        info = TokenInfo(token_id, name, scope, now, None if ttl is None else now + ttl, bool(single_use))
        (db or self._db()).execute(
            "INSERT INTO tokens (id, name, scope, kdf, salt, hash, created, expires, single_use) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (token_id, name, scope, _KDF, salt, _hash(secret, salt), now, info.expires, int(info.single_use)),
        )
        return f"{PREFIX}{token_id}.{secret}", info

    def list(self) -> list[TokenInfo]:
        """Every token, oldest first."""
        rows = self._db().execute("SELECT * FROM tokens ORDER BY created, id").fetchall()
        return [self._info(r) for r in rows]

    def get(self, token_id: str) -> TokenInfo | None:
        row = self._db().execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        return None if row is None else self._info(row)

    def revoke(self, token_id: str, db: sqlite3.Connection | None = None) -> bool:
        """Revoke a token; False when there is no such token or it was already revoked."""
        cursor = (db or self._db()).execute(
            "UPDATE tokens SET revoked = ? WHERE id = ? AND revoked IS NULL", (time.time(), token_id)
        )
        return cursor.rowcount == 1

    def revoke_named(self, scope: str, name: str, db: sqlite3.Connection | None = None) -> int:
        """Revoke every live token of ``scope`` named ``name`` (a re-enrolled device's old ones)."""
        cursor = (db or self._db()).execute(
            "UPDATE tokens SET revoked = ? WHERE scope = ? AND name = ? AND revoked IS NULL",
            (time.time(), scope, name),
        )
        return cursor.rowcount

    def spend(self, token_id: str, db: sqlite3.Connection) -> bool:
        """Mark a single-use token used, atomically; False when someone spent it first."""
        cursor = db.execute(
            "UPDATE tokens SET used = ? WHERE id = ? AND single_use = 1 AND used IS NULL AND revoked IS NULL",
            (time.time(), token_id),
        )
        return cursor.rowcount == 1

    def authenticate(self, token: str, now: float | None = None) -> TokenInfo:
        """The live token ``token`` names, or :class:`AuthError` (the message says why)."""
        match = _TOKEN_RE.match(token)
        if match is None:
            raise AuthError("malformed token: expected ec_<id>.<secret>")
        token_id, secret = match.groups()
        row = self._db().execute("SELECT * FROM tokens WHERE id = ?", (token_id,)).fetchone()
        if row is None or not self._secret_matches(token_id, secret, row):
            raise AuthError("invalid token")
        info = self._info(row)
        state = info.state(now)
        if state != "active":
            raise AuthError(f"token {token_id} is {state}")
        return info

    def _secret_matches(self, token_id: str, secret: str, row: sqlite3.Row) -> bool:
        digest = hmac.digest(self._cache_key, secret.encode(), "sha256")
        known = self._verified.get(token_id)
        if known is not None and hmac.compare_digest(known, digest):
            return True
        if row["kdf"] != _KDF or not hmac.compare_digest(_hash(secret, row["salt"]), row["hash"]):
            return False
        self._verified[token_id] = digest
        return True
