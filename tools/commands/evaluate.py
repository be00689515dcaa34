"""``fetalhead evaluate MODEL DATA --out DIR``: score a model bundle on other scans."""

from __future__ import annotations

from typing import Sequence

from tools.command import add_config, add_settings, parser, run, settings
from train.evaluate import EvaluateConfig


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("evaluate", "Score a model bundle on scan folders: metrics, plots, per-frame predictions.")
    p.add_argument("model", help="model bundle (.fhb) made by fetalhead train")
    p.add_argument("data", help="dataset folder: one folder per scan")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write report.md, its tables and plots into (required)")
    add_settings(p, EvaluateConfig)
    add_config(p, "evaluate")
    args = p.parse_args(argv)

    def work() -> int:
        from tools import render
        from train.evaluate import evaluate

        config = settings(args, EvaluateConfig, "evaluate")
        result = evaluate(args.model, args.data, args.out, cache_dir=config.cache_dir or None,
                          progress=render.progress(config.progress))
        render.print_evaluation(result)
        return 0

    return run(work, verbose=args.verbose)
