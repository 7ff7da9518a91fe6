import subprocess
import sys

from awm import cli


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "awm", "--help"], capture_output=True, text=True, check=True).stdout
    for name in ("crawl", "ingest", "shard", "train", "eval", "score", "upscale", "submit", "demo"):
        assert name in out


def test_usage_error_exit_code():
    assert cli.main(["no-such-command"]) == 2
    assert cli.main([]) == 2
