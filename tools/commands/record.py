"""``fetalhead record``: scores to CSV, annotated frames to a video or on screen, head episodes' best frames."""

from __future__ import annotations

from typing import Sequence

from stream import net
from stream.record import RecordConfig, record
from tools.command import add_config, add_settings, parser, run, settings


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("record", "Write scores to CSV, annotated frames to a video, and each head episode's best frame "
                         "(PNG and DICOM) with episodes.csv.")
    add_settings(p, RecordConfig)
    add_config(p, "record")
    args = p.parse_args(argv)

    def work() -> int:
        config = settings(args, RecordConfig, "record")
        with net.process_scope() as stop:
            record(config, stop)
        return 0

    return run(work, verbose=args.verbose)
