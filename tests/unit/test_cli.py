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


def test_help_never_shows_a_none_default(capsys):
    """A required option or one without a default says nothing about a default, never "(default: None)"."""
    for name in cli.COMMANDS:
        cli.main([name, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in out, name
        assert "default: )" not in out, name


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


def test_debug_is_accepted_before_and_after_the_command(tmp_path):
    """Every error suggests --debug; it works wherever it is written (and only then raises)."""
    import logging

    import pytest

    from awm.models.loaded import CheckpointError

    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logging.getLogger("awm.cli").addHandler(handler)
    argv = ["convert", str(tmp_path / "missing"), "--out", str(tmp_path / "x.pth")]
    try:
        assert cli.main(argv) == 1
    finally:
        logging.getLogger("awm.cli").removeHandler(handler)
    assert any("re-run with --debug" in m for m in seen), seen
    for where in (["--debug", *argv], [*argv, "--debug"], [argv[0], "--debug", *argv[1:]]):
        with pytest.raises(CheckpointError, match="no such file"):
            cli.main(where)
    assert not any(tmp_path.iterdir())


def test_unknown_option_prints_the_commands_usage(capsys):
    for argv in (["shard", "--no-such-flag"], ["weights", "list", "--frob"], ["train", "--config", "tiny-cpu", "--x"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"usage: awm {argv[0]}"), err[:200]
        assert f"awm {' '.join(argv[:2]) if argv[0] == 'weights' else argv[0]}: error: unrecognized arguments: " \
               f"{argv[-1]}" in err, err


def test_no_progress_on_every_command(monkeypatch, capsys):
    """Each command (and each action of one that has actions) takes --no-progress, which turns bars off."""
    import argparse

    from awm.log import progress

    def parsers(p):
        yield p
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                for child in a.choices.values():
                    yield from parsers(child)

    for name in cli.COMMANDS:
        _, modules = cli.build_parser(name)
        for p in parsers(modules["parser:" + name]):
            assert "--no-progress" in p._option_string_actions, p.prog
            assert "--debug" in p._option_string_actions, p.prog
    monkeypatch.setenv("AWM_NO_PROGRESS", "0")  # restored after the test, whatever main sets
    capsys.readouterr()
    assert list(progress([1, 2], desc="bar")) == [1, 2]
    assert "bar: 100%" in capsys.readouterr().err  # a bar by default (rank 0)...
    assert cli.main(["weights", "list", "--no-progress"]) == 0
    assert list(progress([1, 2], desc="bar")) == [1, 2]
    assert "bar" not in capsys.readouterr().err  # ...none after --no-progress, here and in child processes


def test_train_print_config_resolves_recipe_and_overrides(tmp_path, monkeypatch, capsys):
    import yaml

    from awm import config
    from awm.train.config import TrainConfig, load_config

    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "--config", "tiny-cpu", "steps=7", "data.batch_size=3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["steps"] == 7 and printed["data"]["batch_size"] == 3 and printed["model"]["arch"]
    (tmp_path / "printed.yaml").write_text(yaml.safe_dump(printed))
    again = config.load(TrainConfig, tmp_path / "printed.yaml")
    assert config.digest(again) == config.digest(load_config("tiny-cpu", ["steps=7", "data.batch_size=3"]))
    assert list(tmp_path.iterdir()) == [tmp_path / "printed.yaml"]  # nothing else written
    assert cli.main(["train", "--config", "tiny-cpu", "steps=0", "--print-config"]) == 2
    assert "steps" in capsys.readouterr().err


def test_train_help_lists_config_keys(capsys):
    assert cli.main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for line in ("  steps = 100000  (int) total optimizer steps", "  data.train = ", "  validation.every = 1000  (int)",
                 "  model.discriminator.name = unet-sn", "  checkpoint.metric = psnr_y  (str)"):
        assert line in out, line
