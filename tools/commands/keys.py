"""``fetalhead keys DIR``: make CURVE key pairs to encrypt and authenticate the stream links."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

from stream.keys import DEFAULT_NAMES, PUBLIC_SUFFIX, SECRET_SUFFIX, make_keys
from tools.command import parser, run

logger = logging.getLogger(__name__)


def main(argv: Sequence[str] | None = None) -> int:
    p = parser("keys", "Make CURVE key pairs for encrypted, authenticated links.")
    p.add_argument("folder", type=Path,
                   help=f"folder for NAME{PUBLIC_SUFFIX} (public) and NAME{SECRET_SUFFIX} (private) files")
    p.add_argument("--name", action="append", dest="names", metavar="NAME",
                   help=f"key pair to make; repeat for several (default: {', '.join(DEFAULT_NAMES)})")
    p.add_argument("--force", action="store_true", help="replace existing key files (default: off)")
    args = p.parse_args(argv)

    def work() -> int:
        made = make_keys(args.folder, args.names or DEFAULT_NAMES, force=args.force)
        for path in made:
            logger.info("key pair %s: public %s, secret %s", path.name.removesuffix(SECRET_SUFFIX),
                        path.with_suffix(PUBLIC_SUFFIX), path)
        logger.info("give --keys %s to capture, worker, watch, record and run; copy only %s files "
                    "to other machines", args.folder, PUBLIC_SUFFIX)
        return 0

    return run(work, verbose=args.verbose)
