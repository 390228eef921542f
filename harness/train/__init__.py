"""One arm from start to summary: its models, rollout, updates, checkpoints, processes and lm-eval scores."""
