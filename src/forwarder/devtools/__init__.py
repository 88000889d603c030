"""Local stand-ins for demos, tests and benchmarks: the echo model server, the demo, child processes."""
