"""TRL's GRPOTrainer as an arm: its settings, the hooks that probe it, and its bench."""
