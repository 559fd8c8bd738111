"""Download release files from the cloud over HTTP(S) with the node's bearer token.

:class:`HttpFetcher` speaks through :class:`~edgecascade.device_sdk.transport.http.CloudHttp`
(standard library only: a device installs no HTTP client for this), so it never follows
redirects, streams to disk with a size cap and raises
:class:`~edgecascade.device_sdk.errors.TransportError` (unreachable, timeout) or
:class:`~edgecascade.device_sdk.errors.RemoteError` (an HTTP error status); a file over the
cap is a :class:`~edgecascade.device_sdk.errors.BundleError`. :class:`InMemoryFetcher` is its
in-process twin for tests.
"""

from __future__ import annotations

import abc
import tempfile
from collections.abc import Callable
from pathlib import Path

from edgecascade.device_sdk.errors import BundleError, RemoteError, WireError
from edgecascade.device_sdk.transport.http import CloudHttp


class Fetcher(abc.ABC):
    """Gets one file of the cloud (``path`` is a route like ``/v1/models/2/manifest.json``)."""

    @abc.abstractmethod
    def fetch(self, path: str, target: Path) -> None:
        """Write the file at ``path`` to ``target`` (which must not exist yet)."""

    def read(self, path: str, max_bytes: int) -> bytes:
        """The body at ``path`` (a small answer such as the current release), at most ``max_bytes``."""
        with tempfile.TemporaryDirectory(prefix="edgecascade-fetch-") as tmp:
            target = Path(tmp) / "body"
            self.fetch(path, target)
            if target.stat().st_size > max_bytes:
                raise BundleError(f"{path}: answer larger than {max_bytes} bytes")
            return target.read_bytes()

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class InMemoryFetcher(Fetcher):
    """Serves ``files[path]`` (bytes) or calls ``files(path)``; a missing path is a 404."""

    def __init__(self, files: dict[str, bytes] | Callable[[str], bytes | None]) -> None:
        self._files = files

    def fetch(self, path: str, target: Path) -> None:
        data = self._files.get(path) if isinstance(self._files, dict) else self._files(path)
        if data is None:
            raise RemoteError(404, f"no file {path}")
        with open(target, "xb") as f:
            f.write(data)


class HttpFetcher(Fetcher):
    """GET files of ``base_url`` with ``Authorization: Bearer <token>``, at most ``max_bytes`` each."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 10.0,
        ca_file: Path | None = None,
        max_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self._http = CloudHttp(
            base_url,
            token,
            timeout=timeout,
            ca_file=ca_file,
            user_agent="edgecascade-updater",
            max_bytes=max_bytes,
        )
        self.base_url = self._http.base_url
        self.timeout = timeout
        self.max_bytes = max_bytes

    def fetch(self, path: str, target: Path) -> None:
        """Stream the file at ``path`` to ``target``; nothing is left there when it fails."""
        try:
            self._http.download(path, target, self.max_bytes)
        except WireError as exc:  # over the cap: a release file this node will not take
            raise BundleError(str(exc)) from None

    def read(self, path: str, max_bytes: int) -> bytes:
        """The body at ``path``, read in memory (no temporary file)."""
        try:
            return self._http.get(path, max_bytes)
        except WireError as exc:
            raise BundleError(f"{path}: {exc}") from None

    def close(self) -> None:
        """Close the keep-alive connections."""
        self._http.close()
