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


def test_every_command_help_renders(capsys):
    for name in cli.COMMANDS:
        try:
            code = cli.main([name, "--help"])
        except SystemExit as e:  # pragma: no cover - argparse exits on --help
            code = e.code
        assert code in (0, 2), name
    assert "usage" in capsys.readouterr().out
