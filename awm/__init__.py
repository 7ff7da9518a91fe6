"""AWM: anime-wallpaper super-resolution, from crawl to upscale."""

__version__ = "0.1.0"
