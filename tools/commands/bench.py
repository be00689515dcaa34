"""``fetalhead bench``: speed figures as ratios against baselines measured in the same run."""

from __future__ import annotations

from typing import Sequence

from tools.bench import BenchConfig, bench, write_json
from tools.command import add_config, add_settings, parser, run, settings


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("bench", "Speed figures as ratios against baselines measured in the same run.")
    add_settings(p, BenchConfig)
    add_config(p, "bench")
    args = p.parse_args(argv)

    def work() -> int:
        from rich.console import Console

        from tools.render import print_bench_table

        config = settings(args, BenchConfig, "bench")
        console = Console(stderr=True)
        rows = bench(config, progress=lambda s: console.log(s))
        print_bench_table(rows)
        if config.json:
            write_json(rows, config.json)
        return 0

    return run(work, verbose=args.verbose)
