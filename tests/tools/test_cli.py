import subprocess
import sys

import pytest

from tools.bench import SECTIONS
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


# Every subcommand: a bad flag is a usage error (exit 2) naming the flag and what it takes;
# a bad value in its TOML table is exit 1 naming the setting and what is allowed.
BAD_FLAGS = [
    (["model", "info", "--image-size", "big"], "argument --image-size: invalid int value: 'big'"),
    (["model", "export", "m.fhb", "m.pt"], "argument out: export m.pt: unknown format '.pt': write OUT.keras (Keras), "
     "OUT.onnx (ONNX), or a folder OUT/, OUT.savedmodel or OUT (TensorFlow SavedModel)"),
    (["synth", "{tmp}/out", "--scans", "many"], "argument --scans: invalid int value: 'many'"),
    (["data", "check", "{tmp}", "--window", "x"], "argument --window: invalid int value: 'x'"),
    (["train", "{tmp}", "--out", "{tmp}/run", "--threshold-rule", "max"],
     "argument --threshold-rule: invalid choice: 'max' (choose from 'calibrated', 'youden', 'f1')"),
    (["evaluate", "m.fhb", "{tmp}", "--out", "{tmp}/eval", "--cache-dir"],
     "argument --cache-dir: expected one argument"),
    (["capture", "synthetic", "--mode", "fast"], "argument --mode: invalid choice: 'fast' (choose from 'live', 'lossless')"),
    (["worker", "--model", "m.fhb", "--batch", "x"], "argument --batch: invalid int value: 'x'"),
    (["watch", "--interval", "often"], "argument --interval: invalid float value: 'often'"),
    (["record", "--fps", "fast"], "argument --fps: invalid float value: 'fast'"),
    (["view", "--max-fps", "many"], "argument --max-fps: invalid float value: 'many'"),
    (["igtl-out", "--port", "x"], "argument --port: invalid int value: 'x'"),
    (["hub", "--max-message-size", "big"], "argument --max-message-size: invalid int value: 'big'"),
    (["explain", "m.fhb", "{tmp}", "--out", "{tmp}/x", "--alpha", "x"], "argument --alpha: invalid float value: 'x'"),
    (["run", "synthetic", "--mode", "fast"], "argument --mode: invalid choice: 'fast' (choose from 'live', 'lossless')"),
    (["keys"], "the following arguments are required: folder"),
    (["soak", "--minutes", "long"], "argument --minutes: invalid float value: 'long'"),
]
BAD_TABLES = [
    (["model", "info"], "[model]\nwindow = 0\n", "model.window: must be >= 1, got 0"),
    (["synth", "{tmp}/out"], "[synth]\nscans = 0\n", "synth.scans: must be >= 1, got 0"),
    (["data", "check", "{tmp}"], "[data]\nwindow = 0\n", "data.window: must be >= 1, got 0"),
    (["train", "{tmp}", "--out", "{tmp}/run"], "[train]\nfolds = 1\n", "train.folds: must be >= 2, got 1"),
    (["evaluate", "m.fhb", "{tmp}", "--out", "{tmp}/eval"], "[evaluate]\nbatch = 0\n",
     "evaluate.batch: unknown setting (known: "),
    (["capture", "synthetic"], '[capture]\nmode = "fast"\n', "capture.mode: 'fast' is not one of 'live', 'lossless'"),
    (["worker", "--model", "m.fhb"], "[worker]\nwarn_interval_s = -1\n", "worker.warn_interval_s: must be >= 0, got -1"),
    (["watch"], "[watch]\ninterval_s = 0\n", "watch.interval_s: must be > 0, got 0.0"),
    (["record"], '[record]\ncsv = "s.csv"\nfps = 0\n', "record.fps: must be in (0, 1000], got 0.0"),
    (["view"], '[view]\naddr = "0.0.0.0:8000"\n', "view.addr: 0.0.0.0 is not a loopback address"),
    (["run", "synthetic", "--model", "m.fhb"], "[run]\nrestarts = -1\n", "run.restarts: must be >= 0, got -1"),
    (["capture", "synthetic"], '[capture]\nallow = "keys/"\n', "capture.allow: needs keys (--keys DIR) to turn CURVE on"),
    (["soak"], "[soak]\nfps = 0\n", "soak.fps: must be > 0, got 0.0"),
    (["hub"], "[hub]\nworkers = []\n", "hub.captures, workers: give at least one side"),
    (["explain", "m.fhb", "{tmp}", "--out", "{tmp}/x"], '[explain]\nframes = "often"\n',
     "explain.frames: 'often' is not head, all or a number >= 1"),
    (["demo"], "[demo]\nfolds = 1\n", "demo.folds: must be >= 2, got 1"),
    (["bench"], '[bench]\nsections = ["fast"]\n', "bench.sections: 'fast' is not one of " + ", ".join(SECTIONS)),
]


@pytest.mark.parametrize(("argv", "message"), BAD_FLAGS, ids=[a[0] for a, _ in BAD_FLAGS])
def test_a_bad_flag_of_every_command_is_one_usage_line(argv, message, tmp_path, capsys):
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fetalhead {' '.join(argv[:2] if argv[0] in ('model', 'data') else argv[:1])}: error: {message}"


@pytest.mark.parametrize(("argv", "table", "message"), BAD_TABLES, ids=[a[0] for a, _, _ in BAD_TABLES])
def test_a_bad_value_in_every_commands_config_table_is_one_line(argv, table, message, tmp_path, capsys):
    config = tmp_path / "fetalhead.toml"
    config.write_text(table)
    assert main([a.format(tmp=tmp_path) for a in argv] + ["--config", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fetalhead: error: {message}") and "\n" not in err


def test_every_command_is_covered():
    from tools.cli import COMMANDS

    covered = {argv[0] for argv, _ in BAD_FLAGS}
    assert covered == set(COMMANDS) - {"demo", "bench"}


# Every command and sub-command; an option without a default says it is required.
HELP_PAGES = [["model", "info"], ["model", "export"], ["synth"], ["data", "check"], ["train"], ["train", "merge"],
              ["evaluate"], ["capture"], ["worker"], ["watch"], ["record"], ["run"], ["keys"], ["demo"], ["bench"],
              ["soak"], ["view"], ["igtl-out"], ["hub"], ["explain"]]
NO_DEFAULT = {"-h", "-v", "--config"}


@pytest.mark.parametrize("argv", HELP_PAGES, ids=[" ".join(a) for a in HELP_PAGES])
def test_every_option_of_every_command_shows_its_default(argv, capsys, monkeypatch):
    # One option a line: argparse wraps at $COLUMNS.
    monkeypatch.setenv("COLUMNS", "1000")
    assert main([*argv, "--help"]) == 0
    text = capsys.readouterr().out
    entries: list[str] = []
    for line in text[text.index("options:"):].splitlines()[1:]:
        if line.startswith("  -"):
            entries.append(line.strip())
        elif line.startswith("   ") and entries:
            # A long option's help goes on the lines below it.
            entries[-1] += " " + line.strip()
    assert entries
    missing = [entry for entry in entries if entry.split()[0].rstrip(",") not in NO_DEFAULT
               and "(default" not in entry and "required" not in entry]
    assert missing == []
