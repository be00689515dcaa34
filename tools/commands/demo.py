"""``fetalhead demo``: synthetic data -> k-fold training -> live replay of a held-out scan."""

from __future__ import annotations

from typing import Sequence

from tools.command import add_config, add_settings, parser, run, settings
from tools.demo import DemoConfig, demo


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("demo", "Synthetic data -> k-fold training -> live replay of a held-out scan.")
    add_settings(p, DemoConfig)
    add_config(p, "demo")
    args = p.parse_args(argv)
    return run(lambda: demo(settings(args, DemoConfig, "demo")), verbose=args.verbose)
