"""Every console script answers --help with its usage and exit code 0, without starting anything."""
from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import pytest

SCRIPTS = sorted((ep.name, ep.value.split(":")[0]) for ep in entry_points(group="console_scripts")
                 if ep.value.startswith("specvla_ros."))


def test_the_package_declares_its_console_scripts() -> None:
    assert {"specvla_node", "specvla_sim", "specvla_policy_server"} <= {name for name, _ in SCRIPTS}


@pytest.mark.parametrize("name,module", SCRIPTS)
def test_help_prints_usage_and_exits_0(name: str, module: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.lstrip().startswith("usage:") and name in out.stdout.split("\n")[0]
    assert "[INFO]" not in out.stdout + out.stderr  # nothing started
