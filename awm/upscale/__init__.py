"""Applying a model: tiled inference over files, folders and shards."""
