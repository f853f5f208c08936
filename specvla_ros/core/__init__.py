"""Middleware-free heart of specvla_ros: tokenizers, models, drafters, the
speculative decoder, kinematics and the safety gate. Never imports rclpy."""
