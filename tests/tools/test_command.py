"""Flags generated from a settings dataclass: names, types, choices, defaults shown, and what overrides what."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from models.errors import ConfigError
from tests.models.test_settings import Probe
from tools.command import add_config, add_settings, parser, run, settings


@dataclasses.dataclass(frozen=True)
class Undocumented:
    size: int = 3


def probe_parser():
    p = parser("probe", "A probe.")
    add_settings(p, Probe)
    add_config(p, "probe")
    return p


def test_every_field_is_a_flag_of_its_type_with_its_default_shown(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        probe_parser().parse_args(["--help"])
    text = capsys.readouterr().out
    # "  --rate X   an optional number (...)": the option with its metavar, then its help, which a long
    # option has on the line below.
    entries: list[str] = []
    for line in text.splitlines():
        if line.startswith("  --"):
            entries.append(line.strip())
        elif line.startswith("   ") and entries:
            entries[-1] += "  " + line.strip()
    assert dict(re.split(r"\s{2,}", entry, maxsplit=1) for entry in entries) == {
        "--name NAME": "a name (default: probe)",
        "--mode {live,lossless}": "a choice (default: live)",
        "--rate X": "an optional number (default: the source's own)",
        "--sizes A[,B...]": "a list; repeat or comma-separate (default: 1,2)",
        "--switch, --no-switch": "a switch (default: off)",
        "--folder PATH": "a path (default: none)",
        "--config FILE": "TOML file with a [probe] table; flags override it",
    }


def test_only_what_is_given_overrides_the_file_and_the_defaults(tmp_path):
    table = tmp_path / "probe.toml"
    table.write_text('[probe]\nname = "from-file"\nmode = "lossless"\n')
    args = probe_parser().parse_args(["--config", str(table), "--mode", "live", "--sizes", "3,4", "--sizes", "5",
                                      "--switch", "--rate", "2", "--folder", "f"])
    assert settings(args, Probe, "probe") == Probe(name="from-file", mode="live", sizes=(3, 4, 5), on=True,
                                                   rate=2.0, folder=Path("f"))
    assert settings(probe_parser().parse_args(["--no-switch"]), Probe, "probe") == Probe()
    assert settings(probe_parser().parse_args([]), Probe, "probe", name="extra") == Probe(name="extra")


def test_a_bad_flag_is_one_usage_line_and_a_bad_value_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        probe_parser().parse_args(["--mode", "fast"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == ("fetalhead probe: error: argument --mode: invalid choice: 'fast' "
                                       "(choose from 'live', 'lossless')\n")
    args = probe_parser().parse_args(["--rate", "-1"])
    assert run(lambda: settings(args, Probe, "probe")) == 1
    assert capsys.readouterr().err == "fetalhead: error: probe.rate: must be > 0, got -1.0\n"


def test_a_field_without_help_text_is_refused():
    with pytest.raises(TypeError, match="Undocumented.size has no help text"):
        add_settings(parser("x", "x"), Undocumented)


def test_run_turns_interrupts_into_exit_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert run(interrupted) == 130
    assert run(lambda: None) == 0
    with pytest.raises(ConfigError):
        settings(probe_parser().parse_args(["--rate", "-1"]), Probe, "probe")
