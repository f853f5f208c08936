"""specvla_bringup: start the graph of launch/sim.launch.py (or
launch/specvla.launch.py with --robot) as processes, for machines without
`ros2 launch`. Same executables, same parameter file, same remappings.

    specvla_bringup                                   # simulator + node, config/specvla.yaml
    specvla_bringup --params-file my.yaml             # your parameters
    specvla_bringup --robot -r /camera/image_raw:=/wrist/image   # node only, remapped

Ctrl-C (SIGINT) or SIGTERM is forwarded to every process; exits 0 when all
of them stopped cleanly, else the first non-zero exit code.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from specvla_ros.ros.params import default_config_path


@dataclass(frozen=True)
class NodeEntry:
    """One process of a graph: the console script and its node name."""

    executable: str
    name: str


#: The graphs the launch files describe (test_ros_launch checks they agree).
GRAPHS: dict[str, tuple[NodeEntry, ...]] = {
    "sim": (NodeEntry("specvla_sim", "specvla_sim"), NodeEntry("specvla_node", "specvla_node")),
    "robot": (NodeEntry("specvla_node", "specvla_node"),),
}


def command_for(entry: NodeEntry, params_file: Path, remaps: list[str]) -> list[str]:
    """Console script next to this interpreter (as `ros2 launch` would run it), or `python -m` as a fallback."""
    script = Path(sys.executable).parent / entry.executable
    modules = {"specvla_node": "specvla_ros.ros.policy_node", "specvla_sim": "specvla_ros.ros.sim_node"}
    head = [str(script)] if script.exists() else [sys.executable, "-m", modules[entry.executable]]
    args = ["--ros-args", "-r", f"__node:={entry.name}", "--params-file", str(params_file)]
    for remap in remaps:
        args += ["-r", remap]
    return head + args


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="specvla_bringup", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params-file", type=Path, default=None,
                        help="ROS parameter file for every node (default: the shipped config/specvla.yaml)")
    parser.add_argument("--robot", action="store_true",
                        help="node only (launch/specvla.launch.py), for a real robot or an external simulator")
    parser.add_argument("-r", "--remap", action="append", default=[], metavar="FROM:=TO",
                        help="topic remapping passed to every node (repeatable)")
    parser.add_argument("--stop-timeout", type=float, default=15.0,
                        help="seconds to wait for each process after SIGINT before killing it")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    params_file = (args.params_file or default_config_path()).resolve()
    if not params_file.is_file():
        print(f"specvla_bringup: parameter file {params_file} not found", file=sys.stderr)
        return 2
    bad = [r for r in args.remap if ":=" not in r]
    if bad:
        print(f"specvla_bringup: remapping must look like from:=to, got {bad}", file=sys.stderr)
        return 2
    graph = GRAPHS["robot" if args.robot else "sim"]
    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        stop["requested"] = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    procs: list[tuple[NodeEntry, subprocess.Popen[bytes]]] = []
    for entry in graph:
        cmd = command_for(entry, params_file, args.remap)
        print(f"specvla_bringup: starting {' '.join(cmd)}", flush=True)
        # Own process group: a terminal's Ctrl-C reaches us once, and we forward it once.
        procs.append((entry, subprocess.Popen(cmd, env=os.environ.copy(), start_new_session=True)))
    # Run until asked to stop or until any process exits (the graph is incomplete without it).
    while not stop["requested"] and all(p.poll() is None for _, p in procs):
        time.sleep(0.1)
    for _, proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    codes: list[int] = []
    for entry, proc in procs:
        try:
            codes.append(proc.wait(timeout=args.stop_timeout))
        except subprocess.TimeoutExpired:
            print(f"specvla_bringup: {entry.name} did not stop in {args.stop_timeout} s; killing it", file=sys.stderr)
            proc.kill()
            codes.append(proc.wait())
        if codes[-1] != 0:
            print(f"specvla_bringup: {entry.name} exited with {codes[-1]}", file=sys.stderr)
    if not stop["requested"]:
        return next((c for c in codes if c != 0), 1)
    return next((c for c in codes if c != 0), 0)


if __name__ == "__main__":
    sys.exit(main())
