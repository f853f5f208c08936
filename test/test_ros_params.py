"""Parameter schema vs config/specvla.yaml, and the declared parameters of a
real (unconfigured, so no model needed) specvla_node: descriptors, read-only,
ranges, refused runtime changes with a reason, bad start-up values."""
from __future__ import annotations

import pytest
import yaml
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from ros_harness import ros_context
from specvla_ros.ros import params
from specvla_ros.ros.policy_node import PolicyNode


def test_yaml_and_schema_agree() -> None:
    values = params.load_node_params(params.default_config_path())
    assert set(values) == set(params.SPECS)
    d = params.defaults()
    for name, spec in params.SPECS.items():
        assert spec.check(d[name]) is None, name


def test_every_parameter_documented_with_units_where_numeric() -> None:
    for spec in params.SCHEMA:
        assert len(spec.description) > 10, spec.name
        if spec.type in (params.INT, params.DOUBLE) and not spec.name.endswith("seed"):
            assert "[" in spec.description and spec.min is not None and spec.max is not None, spec.name


def test_check_change_reasons() -> None:
    assert params.check_change("max_input_age", 0.3) is None
    assert "minimum" in params.check_change("max_input_age", 0.0)
    assert "read-only" in params.check_change("target_dir", "/tmp/x")
    assert "expected" in params.check_change("narration_every_step", "yes")
    assert "expected int" in params.check_change("max_instruction_length", True)
    assert params.check_change("use_sim_time", True) is None  # not ours: rclpy decides
    assert "does not match" in params.SPECS["device"].check("gpu0")
    assert "not one of" in params.SPECS["decode.mode"].check("beam")


def test_load_node_params_rejects_file_without_section(tmp_path) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(yaml.safe_dump({"other_node": {"ros__parameters": {"a": 1}}}))
    with pytest.raises(ValueError, match="specvla_node"):
        params.load_node_params(f)
    f.write_text(yaml.safe_dump({"/**": {"ros__parameters": {"decode": {"mode": "sample"}}}}))
    assert params.load_node_params(f) == {"decode.mode": "sample"}


def test_declared_parameters_and_runtime_validation() -> None:
    with ros_context(10) as ctx:
        node = PolicyNode(context=ctx, parameter_overrides=[Parameter("max_input_age", value=0.7)])
        try:
            # every schema parameter declared with its descriptor
            for spec in params.SCHEMA:
                assert node.has_parameter(spec.name), spec.name
                desc = node.describe_parameter(spec.name)
                assert desc.read_only == spec.read_only and desc.description == spec.description
            assert node.describe_parameter("control_period").floating_point_range[0].to_value == 10.0
            assert node.describe_parameter("joint_names").type == ParameterType.PARAMETER_STRING_ARRAY
            assert node.get_parameter("max_input_age").value == 0.7  # override applied
            assert node.get_parameter("decode.mode").value == params.defaults()["decode.mode"]

            ok = node.set_parameters([Parameter("max_input_age", value=0.9)])[0]
            assert ok.successful and node.get_parameter("max_input_age").value == 0.9
            ro = node.set_parameters([Parameter("device", value="cpu")])[0]
            assert not ro.successful and "read-only" in ro.reason.lower()
            out_of_range = node.set_parameters([Parameter("decision_deadline", value=-1.0)])[0]
            assert not out_of_range.successful and node.get_parameter("decision_deadline").value > 0
            wrong_type = node.set_parameters([Parameter("narration_every_step", value="yes")])[0]
            assert not wrong_type.successful
            assert node.get_parameter("max_input_age").value == 0.9  # refused changes left it alone
            assert node.unknown_parameters == []
        finally:
            node.destroy_node()


def test_unknown_startup_parameter_is_reported() -> None:
    with ros_context(21) as ctx:
        node = PolicyNode(context=ctx, parameter_overrides=[Parameter("contol_period", value=0.1),
                                                            Parameter("use_sim_time", value=False)])
        try:
            assert node.unknown_parameters == ["contol_period"]
        finally:
            node.destroy_node()


@pytest.mark.parametrize("bad,domain", [
    (Parameter("decode.mode", value="beam"), 11),
    (Parameter("control_period", value=0.0), 22),
    (Parameter("command_interface", value="velocity"), 23),
    (Parameter("joint_names", value=["a", ""]), 24),
])
def test_bad_startup_values_refused_with_reason(bad: Parameter, domain: int) -> None:
    with ros_context(domain) as ctx:
        with pytest.raises(ValueError, match=bad.name.replace(".", r"\.")):
            PolicyNode(context=ctx, parameter_overrides=[bad])


def test_readme_parameter_table_lists_every_parameter() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [s.name for s in params.SCHEMA if f"| `{s.name}` |" not in readme]
    assert not missing, f"README parameter table lacks {missing}"


def test_shipped_yaml_parses_as_a_ros_params_file() -> None:
    # rcl's own YAML parser (what --params-file uses), not PyYAML: nested decode.*, string arrays
    import os

    import rclpy
    from rclpy.context import Context

    saved = os.environ.get("ROS_AUTOMATIC_DISCOVERY_RANGE")
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "OFF"
    ctx = Context()
    try:
        rclpy.init(context=ctx, domain_id=25,
                   args=["--ros-args", "--params-file", str(params.default_config_path()), "-p", "decode.seed:=7"])
        node = PolicyNode(context=ctx)
        try:
            assert node.unknown_parameters == []
            assert node.get_parameter("decode.seed").value == 7  # command line wins over the file
            assert list(node.get_parameter("joint_names").value) == params.defaults()["joint_names"]
            assert node.get_parameter("decode.mode").value == params.defaults()["decode.mode"]
        finally:
            node.destroy_node()
    finally:
        ctx.try_shutdown()
        if saved is None:
            os.environ.pop("ROS_AUTOMATIC_DISCOVERY_RANGE", None)
        else:
            os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = saved
