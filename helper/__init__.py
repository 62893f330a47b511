"""Training loops, checkpoints, logging, devices and small utilities."""
