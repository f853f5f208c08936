"""The launch files, checked as far as possible without `launch` installed:
they parse; every executable they start is a declared console script; every
parameter they set exists in the schema; every LaunchConfiguration is
declared; their graphs match what specvla_bringup starts."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from specvla_ros.ros import params, topics
from specvla_ros.ros.bringup import GRAPHS, command_for

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = {"robot": ROOT / "launch" / "specvla.launch.py", "sim": ROOT / "launch" / "sim.launch.py"}


def _console_scripts() -> dict[str, str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for k, v in zip(node.keys, node.values):
                if isinstance(k, ast.Constant) and k.value == "console_scripts":
                    entries = [ast.literal_eval(e) for e in v.elts]
                    return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
    raise AssertionError("setup.py declares no console_scripts")


def _calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _kw(call: ast.Call, key: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == key), None)


@pytest.mark.parametrize("graph", sorted(LAUNCH))
def test_launch_file(graph: str) -> None:
    path = LAUNCH[graph]
    tree = ast.parse(path.read_text(), filename=str(path))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    scripts = _console_scripts()
    nodes = _calls(tree, "Node")
    assert nodes, "no Node actions"
    started = []
    for call in nodes:
        assert ast.literal_eval(_kw(call, "package")) == "specvla_ros"
        exe = ast.literal_eval(_kw(call, "executable"))
        assert exe in scripts, f"{exe} is not a console script of setup.py"
        started.append((exe, ast.literal_eval(_kw(call, "name"))))
        plist = _kw(call, "parameters")
        for item in (plist.elts if isinstance(plist, ast.List) else []):
            if isinstance(item, ast.Dict):
                for key in item.keys:
                    name = ast.literal_eval(key)
                    if exe == "specvla_node":
                        assert name in params.SPECS, f"{path.name}: unknown parameter {name}"
        remaps = _kw(call, "remappings")
        for pair in (remaps.elts if isinstance(remaps, ast.List) else []):
            src = ast.literal_eval(pair.elts[0])
            assert src in set(topics.TYPES), src
    assert started == [(e.executable, e.name) for e in GRAPHS[graph]]
    # every LaunchConfiguration refers to a declared argument
    declared = {ast.literal_eval(c.args[0]) for c in _calls(tree, "DeclareLaunchArgument")}
    used = {ast.literal_eval(c.args[0]) for c in _calls(tree, "LaunchConfiguration")}
    assert used <= declared, used - declared
    # the default parameter file they point at is the shipped one
    joins = [ast.literal_eval(e) for c in _calls(tree, "PathJoinSubstitution")
             for e in c.args[0].elts if isinstance(e, ast.Constant)]
    assert joins == ["config", params.CONFIG_NAME] and (ROOT / "config" / params.CONFIG_NAME).is_file()


def test_bringup_commands_use_ros_args(tmp_path: Path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("specvla_node:\n  ros__parameters: {}\n")
    for entry in GRAPHS["sim"]:
        cmd = command_for(entry, f, ["/camera/image_raw:=/cam"])
        i = cmd.index("--ros-args")
        assert cmd[i:] == ["--ros-args", "-r", f"__node:={entry.name}", "--params-file", str(f),
                           "-r", "/camera/image_raw:=/cam"]


# --- launch/gazebo.launch.py: cannot run here (no Gazebo); its structure and files are checked ----

GAZEBO_LAUNCH = ROOT / "launch" / "gazebo.launch.py"
#: The other packages' executables it starts (a Gazebo + ros2_control install provides them).
GAZEBO_THIRD_PARTY = {("robot_state_publisher", "robot_state_publisher"), ("ros_gz_sim", "create"),
                      ("ros_gz_bridge", "parameter_bridge"), ("controller_manager", "spawner")}


def _literal(node: ast.expr) -> object:
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def test_gazebo_launch_file() -> None:
    from specvla_ros.ros import gazebo

    tree = ast.parse(GAZEBO_LAUNCH.read_text(), filename=str(GAZEBO_LAUNCH))
    assert any(isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description" for n in tree.body)
    scripts = _console_scripts()
    ours, theirs, spawned = [], set(), []
    for call in _calls(tree, "Node"):
        package, exe = _literal(_kw(call, "package")), _literal(_kw(call, "executable"))
        if package != "specvla_ros":
            theirs.add((package, exe))
            args = _kw(call, "arguments")
            if exe == "parameter_bridge":
                bridged = {a.split("@")[0]: a for a in _literal(args)}
                assert bridged[topics.IMAGE] == f"{topics.IMAGE}@sensor_msgs/msg/Image[gz.msgs.Image"
                assert "/clock" in bridged
            if exe == "spawner":
                spawned += [ast.unparse(a) for a in args.elts]
            continue
        assert exe in scripts, f"{exe} is not a console script of setup.py"
        ours.append((exe, _literal(_kw(call, "name"))))
        for item in _kw(call, "parameters").elts:
            if isinstance(item, ast.Dict):
                values = {_literal(k): v for k, v in zip(item.keys, item.values)}
                for name in values:
                    assert name in params.SPECS or name == "use_sim_time", f"unknown parameter {name}"
                assert _literal(values["use_sim_time"]) is True
        assert _kw(call, "remappings") is None  # the bridge publishes on the node's own topic names
    assert ours == [("specvla_node", "specvla_node")]
    assert theirs == GAZEBO_THIRD_PARTY
    # the spawned controllers are the ones whose topics the node publishes on
    assert spawned == ["JOINT_STATE_BROADCASTER", "[command_interface, '_controller']", "GRIPPER_CONTROLLER"]
    for choice in params.SPECS["command_interface"].choices:
        assert gazebo.controller_for(choice) == f"{choice}_controller"
    assert f"/{gazebo.controller_for('joint_trajectory')}/" in topics.TRAJECTORY
    assert f"/{gazebo.controller_for('forward_position')}/" in topics.FORWARD
    assert f"/{gazebo.GRIPPER_CONTROLLER}/" in topics.GRIPPER
    declared = {ast.literal_eval(c.args[0]) for c in _calls(tree, "DeclareLaunchArgument")}
    used = {ast.literal_eval(c.args[0]) for c in _calls(tree, "LaunchConfiguration")}
    assert used <= declared, used - declared
    joins = [ast.literal_eval(e) for c in _calls(tree, "PathJoinSubstitution")
             for e in c.args[0].elts if isinstance(e, ast.Constant)]
    assert joins == ["config", params.CONFIG_NAME, "launch", "gz_sim.launch.py"]
