"""Release downloads: :class:`HttpFetcher` against a real server on loopback, and the in-memory twin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgecascade.device_sdk.errors import BundleError, ConfigError, RemoteError, TransportError
from edgecascade.device_sdk.transport.fetch import HttpFetcher, InMemoryFetcher
from tests.device_sdk.transport.loopback_http import LoopbackHttp, Reply

TOKEN = "ec_node.t0ken"
MANIFEST = b'{"name": "fmnist", "version": 2}'


@pytest.fixture
def cloud() -> Iterator[LoopbackHttp]:
    server = LoopbackHttp()
    server.routes["/v1/models/2/manifest.json"] = lambda seen: Reply(200, MANIFEST)
    server.routes["/v1/models/2/device.tflite"] = lambda seen: Reply(200, b"m" * 20_000, chunked=True)
    server.start()
    yield server
    server.stop()


def test_fetch_writes_the_file_with_the_nodes_token(cloud: LoopbackHttp, tmp_path: Path) -> None:
    fetcher = HttpFetcher(cloud.url + "/", TOKEN, timeout=2.0)
    fetcher.fetch("/v1/models/2/manifest.json", tmp_path / "manifest.json")
    fetcher.fetch("/v1/models/2/device.tflite", tmp_path / "device.tflite")
    fetcher.close()
    assert (tmp_path / "manifest.json").read_bytes() == MANIFEST
    assert (tmp_path / "device.tflite").read_bytes() == b"m" * 20_000
    assert fetcher.base_url == cloud.url
    for seen in cloud.seen:
        assert seen.headers["Authorization"] == f"Bearer {TOKEN}"
        assert seen.headers["User-Agent"] == "edgecascade-updater"
    assert len(set(cloud.peers)) == 1  # both files over one keep-alive connection


def test_read_returns_a_small_answer_in_memory(cloud: LoopbackHttp) -> None:
    fetcher = HttpFetcher(cloud.url, TOKEN)
    assert fetcher.read("/v1/models/2/manifest.json", 1024) == MANIFEST
    with pytest.raises(BundleError, match=r"manifest\.json"):
        fetcher.read("/v1/models/2/manifest.json", 10)


def test_a_file_over_the_cap_is_a_bundle_error_and_leaves_nothing(
    cloud: LoopbackHttp, tmp_path: Path
) -> None:
    fetcher = HttpFetcher(cloud.url, TOKEN, max_bytes=10_000)
    with pytest.raises(BundleError, match="10000 bytes"):
        fetcher.fetch("/v1/models/2/device.tflite", tmp_path / "device.tflite")
    assert not (tmp_path / "device.tflite").exists()


def test_errors_are_mapped(cloud: LoopbackHttp, tmp_path: Path) -> None:
    fetcher = HttpFetcher(cloud.url, TOKEN)
    with pytest.raises(RemoteError) as info:
        fetcher.fetch("/v1/models/9/manifest.json", tmp_path / "manifest.json")
    assert info.value.code == 404 and not (tmp_path / "manifest.json").exists()
    cloud.stop()
    with pytest.raises(TransportError, match="unreachable"):
        HttpFetcher(cloud.url, TOKEN, timeout=1.0).fetch("/v1/models/2/manifest.json", tmp_path / "m")
    with pytest.raises(ConfigError, match="http"):
        HttpFetcher("file:///etc", TOKEN)


def test_the_in_memory_twin_serves_files_and_404s(tmp_path: Path) -> None:
    fetcher = InMemoryFetcher({"/a": b"alpha"})
    assert fetcher.read("/a", 5) == b"alpha"
    with pytest.raises(BundleError, match="larger than 4"):
        fetcher.read("/a", 4)
    with pytest.raises(RemoteError) as info:
        fetcher.fetch("/b", tmp_path / "b")
    assert info.value.code == 404
