import subprocess
import sys

from tools.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("model", "train", "worker", "capture", "demo"):
        assert name in out


def test_unknown_command_is_one_line(capsys):
    assert main(["fly"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fetalhead: error: unknown command 'fly'") and "\n" not in err


def test_model_info_tiny(capsys):
    assert main(["model", "info", "--backbone", "tiny", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "feature size: 64" in out
    assert "trainable parameters:" in out


def test_bad_flag_value_names_flag_and_allowed_values(capsys):
    assert main(["model", "info", "--backbone", "resnet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--backbone" in err and "vgg19" in err and "tiny" in err and "\n" not in err


def test_console_script_runs():
    result = subprocess.run([sys.executable, "-m", "tools.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: fetalhead" in result.stdout
