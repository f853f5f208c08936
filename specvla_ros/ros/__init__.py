"""specvla_ros.ros."""
