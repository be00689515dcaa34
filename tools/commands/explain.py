"""``fetalhead explain BUNDLE SOURCE --out DIR``: heat-map overlays of where the model looked."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from models.saliency import ExplainConfig
from tools.command import add_config, add_settings, parser, run, settings


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("explain", "LayerCAM heat maps of a model's per-frame scores over a scan, video or DICOM cine.")
    p.add_argument("model", help="model bundle (.fhb) made by fetalhead train")
    p.add_argument("source", help="scan folder, video file or DICOM file or folder")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the PNG overlays and saliency.csv (required)")
    add_settings(p, ExplainConfig)
    add_config(p, "explain")
    args = p.parse_args(argv)

    def work() -> int:
        from models import bundle as bundles
        from models.saliency import explain
        from tools import render
        from tools.sources import open_source

        config = settings(args, ExplainConfig, "explain")
        model = bundles.load(args.model)
        first = open_source(args.source)
        scan = getattr(first, "scan", None)
        opened = [first]

        def frames() -> Iterator[tuple[int, np.ndarray]]:
            source = opened.pop() if opened else open_source(args.source)
            try:
                read = 0
                for frame, _ in source:
                    # Numbered as the capture numbers them: frames left out keep their place.
                    yield read + source.missing, frame
                    read += 1
            finally:
                source.close()

        result = explain(model.runtime(), model.threshold, frames, args.out, config,
                         total=len(scan) if scan is not None else 0, progress=render.progress(config.progress))
        grid = "x".join(str(v) for v in result["grid"])
        left_out = f", {result['rejected']} frames left out (see the log)" if result["rejected"] else ""
        print(f"explained {result['explained']} of {result['frames']} frames ({result['layer']}, {grid} grid)"
              f"{left_out}: {result['csv']}")
        return 0

    return run(work, verbose=args.verbose)
