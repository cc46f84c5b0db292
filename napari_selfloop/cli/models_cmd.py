"""``napari-selfloop models``: the bundled starter models and their model cards."""

from __future__ import annotations

import argparse
import json

from ..core.store.bundled import BUNDLED
from ..core.store.modelcard import bundled_card_text, is_non_commercial
from .commands import SUMMARIES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help=SUMMARIES["models"],
        description="Lists the models shipped with napari-selfloop with their model cards: what "
        "they were trained on, how well they did on images they never saw, and the licence "
        "their weights carry. Any --checkpoint option accepts their names.",
    )
    p.add_argument(
        "--verbose",
        "--details",
        dest="details",
        action="store_true",
        help="also the details: file, held-out figures, jigsaw, chosen settings, recipe",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per model instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.json:
        for m in BUNDLED.values():
            print(
                json.dumps(
                    {
                        "name": m.name,
                        "title": m.title,
                        "kind": m.kind,
                        "file": str(m.path),
                        "installed": m.path.is_file(),
                        "data": m.data,
                        "licence": m.licence,
                        "non_commercial": is_non_commercial(m.licence),
                        "citation": m.citation,
                        "pixel_size_um": m.pixel_size_um,
                    }
                )
            )
        return 0
    print("\n\n".join(bundled_card_text(name, verbose=args.details) for name in BUNDLED))
    return 0
