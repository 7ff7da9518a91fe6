"""From HR originals to training batches: the shard stage, degradations, the loader, test images."""
