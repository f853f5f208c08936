"""The policy behind a process boundary: an inference server that owns the
models and a client the ROS node (or any middleware) drives.

Why a process: torch releases the GIL around every op, so in a process whose
other threads handle 30 Hz images and 100-1000 Hz joint states, every op of a
decision waits for the GIL again. The server process runs inference alone on
its main thread; frames cross in shared memory, the small typed requests and
replies over a Unix socket. One connection is one session (one robot), so one
server can serve several robots.
"""
