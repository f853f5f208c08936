"""Rosbag2 record, play and replay regression without a rosbag2 install.

``io`` reads, summarises and writes bags (MCAP or sqlite3) with `rosbags`, ``types`` keeps
the message type store, ``qos`` the QoS policy, ``player`` and ``recorder`` move raw CDR
messages on and off the graph with rclpy, ``regression`` replays a bag through the policy
node in lockstep and compares its outputs with a golden bag, ``cli`` is ``specvla_bag``.
rclpy is imported lazily: ``io`` and ``types`` work without a ROS environment.
"""
