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


def test_every_command_help_exits_0(capsys):
    """Each command's module is imported and its options render; a broken one fails here by name."""
    for name in cli.COMMANDS:
        code = cli.main([name, "--help"])
        out = capsys.readouterr().out
        assert code == 0, (name, out)
        assert out.startswith(f"usage: awm {name}"), name


def test_help_exit_code_through_the_entry_point():
    r = subprocess.run([sys.executable, "-m", "awm", "shard", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--preset" in r.stdout, r.stderr


def test_top_level_help_imports_no_heavy_library():
    """``awm --help`` stays fast because stage modules (and torch, OpenCV, pyiqa, DeepSpeed, Accelerate,
    PyAV behind them) are imported only when their command runs; a top-level import of one breaks this."""
    heavy = ("torch", "cv2", "pyiqa", "deepspeed", "accelerate", "av", "numpy")
    code = ("import sys\nfrom awm import cli\ncli.build_parser()\ntry:\n    cli.main(['--help'])\n"
            "except SystemExit:\n    pass\n"
            f"print('imported:', *(m for m in {heavy!r} if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.splitlines()[-1] == "imported:", r.stdout[-500:]
