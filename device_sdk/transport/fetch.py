"""Download release files from the cloud over HTTP(S) with the node's bearer token.

:class:`HttpFetcher` uses only the standard library (a device installs no HTTP client for
this). It never follows redirects, so the token goes to the configured cloud and nowhere
else; it streams to disk with a size cap; failures become
:class:`~edgecascade.device_sdk.errors.TransportError` (unreachable, timeout) or
:class:`~edgecascade.device_sdk.errors.RemoteError` (an HTTP error status). :class:`InMemoryFetcher` is
its in-process twin for tests.
"""

from __future__ import annotations

import abc
import json
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgecascade.device_sdk.errors import BundleError, ConfigError, RemoteError, TransportError

_CHUNK = 1 << 16


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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: following one would hand the bearer token to another URL."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


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
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"cloud URL must be http(s), got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self._headers = {"User-Agent": "edgecascade-updater", "Accept": "*/*"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        handlers: list[Any] = [_NoRedirect()]
        if ca_file is not None:
            try:
                context = ssl.create_default_context(cafile=str(ca_file))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(f"cannot use CA file {ca_file}: {exc}") from None
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._opener = urllib.request.build_opener(*handlers)

    def fetch(self, path: str, target: Path) -> None:
        url = self.base_url + path
        request = urllib.request.Request(url, headers=self._headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response, open(target, "xb") as f:
                size = 0
                while chunk := response.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise BundleError(f"{url} is larger than {self.max_bytes} bytes")
                    f.write(chunk)
        except urllib.error.HTTPError as exc:
            raise RemoteError(exc.code, _message(exc)) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise TransportError(f"download of {url} failed: {getattr(exc, 'reason', exc)}") from None


def _message(exc: urllib.error.HTTPError) -> str:
    """The cloud's JSON error message, else the status text."""
    try:
        body = exc.read(4096)
        message = json.loads(body.decode()).get("message")
    except (OSError, ValueError, AttributeError):
        message = None
    return str(message or exc.reason)
