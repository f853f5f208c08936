"""specvla_ros.bench."""
