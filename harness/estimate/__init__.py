"""An arm's step on fake tensors at any model size and world size, its grid, and the checks before a run."""
