"""specvla_ros.sim."""
