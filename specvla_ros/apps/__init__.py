"""Programs built on the whole stack: the demo (``make demo``) and the closed-loop
evaluation (``specvla_eval``), both running specvla_sim and specvla_node as processes
(``graph_runner``). Benchmarks of parts live in ``specvla_ros.bench``."""
