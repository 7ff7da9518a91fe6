"""Networks and their files: generator architectures, discriminators, losses, checkpoints."""
