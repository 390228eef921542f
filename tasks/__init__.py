"""What is asked and how it is scored. Never imports `harness`."""
