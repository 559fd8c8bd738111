"""A device installs from wheels only: the project's wheel with the ``device`` extra, nothing built.

Builds the project's wheel (from a copy of the source, so the working tree gets no
``build/``), installs it with ``pip install --only-binary=:all: '<wheel>[device]'`` into a
fresh venv (PyPI must be reachable; pip's cache makes reruns fast), then runs the
device-only examples there and checks that TensorFlow, Keras and hnswlib are neither
installed nor imported. Prints the venv's size and the install time.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NOT_ON_A_DEVICE = ("tensorflow", "keras", "hnswlib")  # and not edgecascade.training, which needs them
_NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "artifacts", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".typing", "state"
)

# Runs an example in-process as ``python examples/<name>`` would, then reports what was importable
# and what got imported, as JSON on the last line of stdout.
_PROBE = """
import importlib.util, json, runpy, sys
example, *args = sys.argv[1:]
sys.argv = [example, *args]
sys.path.insert(0, example.rsplit("/", 1)[0])
try:
    runpy.run_path(example, run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
heavy = {heavy!r}
imported = [m for m in sys.modules if m.split(".")[0] in heavy or m.startswith("edgecascade.training")]
importable = [m for m in heavy if importlib.util.find_spec(m) is not None]
print(json.dumps({{"code": code, "importable": importable, "imported": sorted(imported)}}))
"""


@dataclass(frozen=True)
class DeviceVenv:
    python: Path
    wheel: Path
    install_seconds: float
    size_mb: float


def _run(command: list[str | Path], what: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{what} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    return result


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory: pytest.TempPathFactory) -> DeviceVenv:
    work = tmp_path_factory.mktemp("device-install")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCE)
    _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", work / "wheels", source],
        "pip wheel",
    )
    (wheel,) = (work / "wheels").glob("edgecascade-*.whl")
    venv = work / "venv"
    started = time.perf_counter()
    _run([sys.executable, "-m", "venv", venv], "python -m venv")
    python = venv / "bin" / "python"
    pip: list[str | Path] = [python, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    _run(
        [*pip, "install", "--only-binary=:all:", f"{wheel}[device]"], "wheel-only install of the device extra"
    )
    seconds = time.perf_counter() - started
    size_kb = int(_run(["du", "-sk", venv], "du").stdout.split()[0])
    return DeviceVenv(python, wheel, seconds, size_kb / 1024)


def test_the_device_extra_installs_from_wheels_alone(
    device_venv: DeviceVenv, capsys: pytest.CaptureFixture[str]
) -> None:
    pip: list[str | Path] = [device_venv.python, "-m", "pip", "--disable-pip-version-check"]
    installed = {
        p["name"].lower(): p["version"]
        for p in json.loads(_run([*pip, "list", "--format=json"], "pip list").stdout)
    }
    _run([*pip, "check"], "pip check")  # every requirement of what is installed is met
    assert {"edgecascade", "ai-edge-litert", "paho-mqtt", "cryptography", "numpy"} <= set(installed)
    assert not {"tensorflow", "tensorflow-cpu", "keras", "hnswlib", "flask"} & set(installed)
    with capsys.disabled():
        print(
            f"\n[device install] {device_venv.wheel.name}[device], wheels only: venv + install in "
            f"{device_venv.install_seconds:.1f} s, venv {device_venv.size_mb:.0f} MB; "
            + ", ".join(f"{name} {version}" for name, version in sorted(installed.items()))
        )


@pytest.mark.parametrize(
    ("example", "expected"),
    [
        ("offline_device.py", "all 200 answered on the device (device); nothing was sent"),
        ("signed_bundle.py", "4 of 4 changed bundles refused"),
    ],
)
def test_device_only_examples_run_without_tensorflow_or_hnswlib(
    device_venv: DeviceVenv, tiny_bundle: Path, example: str, expected: str
) -> None:
    args = ["--bundle", str(tiny_bundle)] + (["-n", "200"] if example == "offline_device.py" else [])
    probe = _PROBE.format(heavy=NOT_ON_A_DEVICE)
    command = [device_venv.python, "-c", probe, EXAMPLES / example, *args]
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, timeout=300, cwd=tiny_bundle.parent
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["code"] == 0, result.stdout + result.stderr
    assert expected in result.stdout
    assert report["importable"] == [] and report["imported"] == []
