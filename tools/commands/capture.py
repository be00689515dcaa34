"""``fetalhead capture``: publish the frames of a device, video file, scan folder, DICOM cine, OpenIGTLink
server or synthetic source."""

from __future__ import annotations

from typing import Sequence

from stream import net
from stream.capture import CaptureConfig, capture
from tools.command import add_config, add_settings, parser, run, settings
from tools.sources import open_source


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("capture", "Publish frames from a video device, video file, scan folder, DICOM file or folder, "
                          "OpenIGTLink server or synthetic source.")
    p.add_argument("source", help="device index (0), video file, scan folder, DICOM file or folder of DICOM "
                                  "files, igtl://HOST:PORT[/DEVICE] (an OpenIGTLink server), or "
                                  "'synthetic'")
    add_settings(p.add_mutually_exclusive_group(), CaptureConfig, only=("fps", "fast"))
    add_settings(p, CaptureConfig, exclude=("fps", "fast"))
    add_config(p, "capture")
    args = p.parse_args(argv)

    def work() -> int:
        config = settings(args, CaptureConfig, "capture")
        source = open_source(args.source, fps=config.fps, loop=config.loop)
        with net.process_scope() as stop:
            capture(source, config, stop)
        return 0

    return run(work, verbose=args.verbose)
