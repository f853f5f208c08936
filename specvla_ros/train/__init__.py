"""specvla_ros.train."""
