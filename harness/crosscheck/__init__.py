"""Arms trained by another library's trainer, measured like ours: the cross-checks of our algorithms."""
