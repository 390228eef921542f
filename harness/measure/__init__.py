"""What a step costs, measured: probes (time, RSS, CUDA, NVML), live tensors per phase, the step meter."""
