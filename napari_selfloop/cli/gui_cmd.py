"""``napari-selfloop gui``: open napari with the assistant docked, on a sample or your images.

napari is imported only when the command runs, so the rest of the CLI stays headless.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from .._sample_data import SAMPLES
from ..core.errors import InputError
from ..core.io.slides import is_slide
from ..core.store.bundled import BUNDLED, model_for_array, resolve_checkpoint
from .args import add_checkpoint, add_device, add_width
from .commands import SUMMARIES

log = logging.getLogger(__name__)

PLUGIN = "napari-selfloop"
ASSISTANT = "Self-loop assistant"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gui", help=SUMMARIES["gui"])
    p.add_argument("images", nargs="*", type=Path, help="images to open (TIFF, PNG, JPEG)")
    p.add_argument(
        "--sample",
        choices=sorted(SAMPLES),
        default=None,
        help="open a sample image: " + "; ".join(f"{k}: {v[1]}" for k, v in SAMPLES.items()),
    )
    add_checkpoint(
        p,
        default=None,
        after=" (default: the bundled model that fits the first image: "
        "nuclei-he for H&E, lesion-dermoscopy for dermoscopy)",
    )
    p.add_argument(
        "--untrained",
        action="store_true",
        help="start from a new, untrained ResUNet-18 of --width instead of a bundled model",
    )
    p.add_argument(
        "--pseudo-label",
        dest="pseudo_label",
        action="store_true",
        default=None,
        help="pseudo-label the image at once (the default with --sample)",
    )
    p.add_argument(
        "--no-pseudo-label",
        dest="pseudo_label",
        action="store_false",
        help="do not pseudo-label the sample at once",
    )
    add_width(p)
    add_device(p)
    p.add_argument(
        "--project",
        type=Path,
        default=None,
        help="project folder for autosave, exports and new checkpoints "
        "(default $NAPARI_SELFLOOP_PROJECT or ~/napari-selfloop)",
    )
    p.set_defaults(func=run)


def _dock(viewer: Any) -> Any:
    """Dock the assistant through the npe2 manifest (as napari's Plugins menu does)."""
    try:
        _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, ASSISTANT)
        return widget
    except (KeyError, ValueError, LookupError) as e:  # plugin not registered (not installed)
        log.warning("napari-selfloop is not registered with napari (%s); docking it directly", e)
        from ..widgets.assistant import AssistantWidget

        widget = AssistantWidget(viewer)
        viewer.window.add_dock_widget(widget, name=ASSISTANT, area="right")
        return widget


def _open_sample(viewer: Any, key: str) -> None:
    try:
        viewer.open_sample(PLUGIN, key)
    except (KeyError, ValueError, LookupError):
        for data, kwargs, kind in SAMPLES[key][0]():
            getattr(viewer, f"add_{kind}")(data, **kwargs)


def choose_bundled(viewer: Any) -> str | None:
    """The bundled model that fits the first image (None without an image or model files).

    A slide (a multiscale layer) is histology: ``nuclei-he``. Its overview would look like
    a dermoscopy photo to the guess (one large dark blob, the tissue, on bright glass).
    """
    images = [layer for layer in viewer.layers if layer.__class__.__name__ == "Image"]
    if images and getattr(images[0], "multiscale", False):
        name = next(m.name for m in BUNDLED.values() if m.kind == "he")
    else:
        name = next((n for n in (model_for_array(layer.data) for layer in images) if n), None)
        if name is None:
            return None
    if not BUNDLED[name].path.is_file():
        log.warning("the bundled model %s is not installed; starting from an untrained model", name)
        return None
    return name


def setup_viewer(
    viewer: Any,
    *,
    sample: str | None = None,
    images: list[Path] | tuple[Path, ...] = (),
    checkpoint: Path | str | None = None,
    width: int | None = None,
    device: str = "auto",
    project: Path | None = None,
    pseudo_label: bool = False,
) -> Any:
    """Open the sample / images in ``viewer``, dock the assistant and make it ready.

    The model is the checkpoint (a path or a bundled model's name; ``"auto"``: the bundled
    model that fits the first image, as :func:`choose_bundled`), or else a new ResUNet-18
    of ``width`` (None: the Model panel's, :class:`~..core.engine.model.ModelConfig`'s
    default). With ``pseudo_label`` and a model, the first image is pseudo-labelled at
    once (in the background). Returns the assistant widget. Used by the ``gui`` command
    and by its test.
    """
    for path in images:
        if not Path(path).exists():
            raise InputError(f"image {path} does not exist")
    if sample is not None and sample not in SAMPLES:
        raise InputError(f"unknown sample {sample!r}: choose one of {', '.join(SAMPLES)}")
    from ..widgets._state import get_state

    state = get_state(viewer)
    if project is not None:
        state.set_project_dir(project)
    if sample is not None:
        _open_sample(viewer, sample)
    for path in images:
        # Slides through our lazy multiscale reader; napari's would load them whole.
        viewer.open(str(path), plugin=PLUGIN if is_slide(path) else "napari")
    assistant = _dock(viewer)
    model_panel = assistant.panel("Model")
    if device != "auto":
        model_panel.device_combo.setCurrentText(device)
    if checkpoint == "auto":
        checkpoint = choose_bundled(viewer)
    if checkpoint is not None:
        if model_panel.load(resolve_checkpoint(checkpoint)) is None:
            raise InputError(f"could not load {checkpoint}")
        assistant.show_tab("Pseudo-label")
        if pseudo_label and any(layer.__class__.__name__ == "Image" for layer in viewer.layers):
            assistant.panel("Pseudo-label").run()
    else:
        model_panel.new_model(width=width)
        # An untrained model predicts noise: start from a classical mask instead.
        assistant.show_tab("Start")
    if sample == "lesion":
        assistant.panel("Start").set_kind("dermoscopy")
    return assistant


#: Share of the screen a first window takes (napari's own first size leaves the canvas
#: about 300 px wide once the assistant is docked).
SCREEN_SHARE = 0.95


def first_window_size(viewer: Any, saved: Any) -> tuple[int, int] | None:
    """Size the window to most of its screen when napari has no saved size (``saved``:
    ``napari.settings``'s ``application.window_size`` read before the viewer opened);
    returns the new (width, height), or None when the user's saved size is kept."""
    if saved:
        return None
    window = viewer.window._qt_window
    screen = window.screen()
    if screen is None:
        return None
    area = screen.availableGeometry()
    width, height = int(area.width() * SCREEN_SHARE), int(area.height() * SCREEN_SHARE)
    if width <= window.width() and height <= window.height():
        return None
    window.resize(max(width, window.width()), max(height, window.height()))
    window.move(
        area.x() + (area.width() - window.width()) // 2,
        area.y() + (area.height() - window.height()) // 2,
    )
    return window.width(), window.height()


def run(args: argparse.Namespace) -> int:
    if args.checkpoint is not None and not args.checkpoint.exists():
        raise InputError(f"checkpoint {args.checkpoint} does not exist")
    if args.untrained and args.checkpoint is not None:
        raise InputError("give either --checkpoint or --untrained, not both")
    import napari
    from napari.settings import get_settings

    saved = get_settings().application.window_size
    viewer = napari.Viewer(title="napari-selfloop")
    first_window_size(viewer, saved)
    setup_viewer(
        viewer,
        sample=args.sample,
        images=args.images,
        checkpoint=None if args.untrained else (args.checkpoint or "auto"),
        width=args.width,
        device=args.device,
        project=args.project,
        pseudo_label=args.sample is not None if args.pseudo_label is None else args.pseudo_label,
    )
    napari.run()
    return 0
