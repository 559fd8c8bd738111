"""Every script in ``examples/`` runs as a user runs it: as a subprocess, on a real stack if it needs one.

The stack is :class:`~edgecascade.tools.stack.LocalStack` on the tiny bundle, and its site
files are written by :func:`edgecascade.tools.demo.write_device_site`, exactly as
``edgecascade demo --serve`` writes them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgecascade.tools.broker import free_port
from edgecascade.tools.demo import DEVICE_SETTINGS_FILE, SITE_FILE, write_device_site
from edgecascade.tools.stack import LocalStack

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
HELPERS = {"fashion_mnist.py"}  # imported by the scripts beside it, not run on its own
TESTED = {"device_predict.py", "offline_device.py", "signed_bundle.py"}  # each has tests below
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name not in HELPERS)


def run_example(name: str, *args: str | Path | int, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``python examples/<name> args...``; the outputs are kept for the assertions."""
    command = [sys.executable, str(EXAMPLES / name), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def counts(pattern: str, text: str) -> dict[str, int]:
    """``name count`` pairs of the one line matching ``pattern`` (its group 1 is the list)."""
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no line matching {pattern!r} in:\n{text}"
    return {name: int(n) for name, n in re.findall(r"([a-z_]+(?: \(degraded\))?) (\d+)", match.group(1))}


@pytest.fixture(scope="module")
def site(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running stack's directory with the example device's files, as ``demo --serve`` leaves it."""
    with LocalStack(tiny_bundle, tmp_path_factory.mktemp("site")) as stack:
        yield write_device_site(stack).parent


def test_every_example_is_tested_and_listed_in_the_readme() -> None:
    found = {p.name for p in EXAMPLES.glob("*.py")}
    assert found == TESTED | HELPERS, "a new example needs a test here (or an entry in HELPERS)"
    readme = (EXAMPLES / "README.md").read_text()
    for name in TESTED:
        assert f"`{name}`" in readme
    for name in HELPERS:
        assert "__main__" not in (EXAMPLES / name).read_text()


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_script_explains_itself(name: str) -> None:
    result = run_example(name, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "--help" in result.stdout


@pytest.mark.integration
def test_device_predict_goes_through_every_tier_of_the_stack(site: Path) -> None:
    result = run_example("device_predict.py", "--site", site, "-n", 200, "--show", 5)
    assert result.returncode == 0, result.stderr
    tiers = counts(r"^tier mix: (.*) \(200 inputs\)$", result.stdout)
    assert sum(tiers.values()) == 200
    assert "device" in tiers and ("gateway" in tiers or "cloud" in tiers)  # the tiny model sends half on
    assert not any("degraded" in tier for tier in tiers)
    assert len(re.findall(r"^#\d+: .* from (device|gateway|cloud)", result.stdout, re.MULTILINE)) == 5
    accuracy = re.search(r"^accuracy: ([0-9.]+) on 200 inputs$", result.stdout, re.MULTILINE)
    assert accuracy and 0.5 < float(accuracy[1]) <= 1.0


def readme_snippet() -> str:
    """The device snippet of the repository's README (the Python block after its marker)."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    after = readme.split("<!-- The core of examples/device_predict.py", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.integration
def test_the_readme_snippet_runs_against_the_stack(site: Path, tmp_path: Path, fmnist: Any) -> None:
    snippet = readme_snippet()
    assert 'site = Path("artifacts/demo-site")' in snippet
    image = tmp_path / "image.npy"
    np.save(image, fmnist.x_test[0])
    code = f"import numpy as np\nimage = np.load({str(image)!r})\n" + snippet.replace(
        'Path("artifacts/demo-site")', f"Path({str(site)!r})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    label, confidence, tier, latency, sent, degraded = result.stdout.split()
    assert 0 <= int(label) < 10 and 0 < float(confidence) <= 1 and float(latency) > 0
    assert tier in {"device", "gateway", "cloud"} and degraded == "False"
    assert (int(sent) > 0) == (tier != "device")


@pytest.mark.integration
def test_device_predict_says_when_the_broker_is_gone(site: Path, tmp_path: Path) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    (gone / SITE_FILE).write_text((site / SITE_FILE).read_text())
    settings = (site / DEVICE_SETTINGS_FILE).read_text()
    (gone / DEVICE_SETTINGS_FILE).write_text(re.sub(r"port = \d+", f"port = {free_port()}", settings))
    result = run_example("device_predict.py", "--site", gone, "-n", 5)
    assert result.returncode == 1
    assert "no broker at 127.0.0.1:" in result.stderr and "Traceback" not in result.stderr


def test_device_predict_without_a_site_says_how_to_start_one(tmp_path: Path) -> None:
    result = run_example("device_predict.py", "--site", tmp_path / "nothing")
    assert result.returncode == 2
    assert "edgecascade demo --serve" in result.stderr and "Traceback" not in result.stderr


def offline_answers(stdout: str) -> tuple[int, int]:
    """How many inputs ``offline_device.py`` answered at the device's exit, and how many degraded."""
    exits = re.search(r"^device exit: (\d+) answers", stdout, re.MULTILINE)
    offline = re.search(r"^degraded \(offline\): (\d+) answers", stdout, re.MULTILINE)
    assert exits and offline, stdout
    return int(exits[1]), int(offline[1])


def test_offline_device_answers_every_input_on_the_device(tiny_bundle: Path) -> None:
    result = run_example("offline_device.py", "--bundle", tiny_bundle, "-n", 300, "--show", 3)
    assert result.returncode == 0, result.stderr
    exits, offline = offline_answers(result.stdout)
    assert exits + offline == 300
    assert exits > 0 and offline > 0  # the tiny model is confident on about half the inputs
    assert "all 300 answered on the device (device); nothing was sent" in result.stdout
    assert len(re.findall(r"^#\d+: .* (confident|degraded \(offline\)) ", result.stdout, re.MULTILINE)) == 3


def test_offline_device_reads_an_npz_and_takes_a_threshold(
    tiny_bundle: Path, fmnist: Any, tmp_path: Path
) -> None:
    data = tmp_path / "few.npz"
    np.savez(data, x=fmnist.x_test[:40], y=fmnist.y_test[:40])
    answered = {}
    for threshold in ("0.3", "0.99"):
        args = ("--bundle", tiny_bundle, "--data", data, "--threshold", threshold)
        result = run_example("offline_device.py", *args)
        assert result.returncode == 0, result.stderr
        answered[threshold] = offline_answers(result.stdout)
        assert sum(answered[threshold]) == 40
    assert answered["0.3"][0] > answered["0.99"][0]  # a lower bar: more answers at the device's exit


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--bundle", "no-such-bundle"], 1, "no manifest.json in no-such-bundle"),
        (["--data", "no-such-dir"], 2, "no Fashion-MNIST at no-such-dir"),
        (["--threshold", "1.5"], 2, "--threshold is a probability"),
    ],
)
def test_offline_device_errors_are_one_line(
    tiny_bundle: Path, args: list[str], code: int, message: str
) -> None:
    result = run_example("offline_device.py", "--bundle", tiny_bundle, *args)
    assert result.returncode == code
    assert message in result.stderr and "Traceback" not in result.stderr


def test_signed_bundle_refuses_every_changed_copy(tiny_bundle: Path) -> None:
    result = run_example("signed_bundle.py", "--bundle", tiny_bundle)
    assert result.returncode == 0, result.stderr
    assert "signed bundle verified: fashion-mnist-tiny v1" in result.stdout
    for case, error in (
        ("unsigned", "SignatureError"),
        ("signed by another key", "SignatureError"),
        ("manifest changed", "SignatureError"),
        ("partition replaced", "BundleError"),
    ):
        assert f"{case}: refused ({error}: " in result.stdout
    assert "4 of 4 changed bundles refused" in result.stdout
    assert not list(tiny_bundle.glob("manifest.sig"))  # the user's bundle itself is left alone
