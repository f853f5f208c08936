"""specvla_ros: a VLA policy for ROS 2 arms, sped up by speculative decoding and
guarded by a safety gate. `specvla_ros.core` is middleware-free (no rclpy)."""

__version__ = "0.1.0"
