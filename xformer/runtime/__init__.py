"""What a process needs around the model: which jax backends to start (platforms), glibc malloc
settings for XLA:CPU (host_memory), the device mesh and placement (sharding), metric logs
(metric_writer), SIGTERM handling (preemption) and the command-line conventions (cli)."""
