"""The sub-commands of ``napari-selfloop``: names, one-line summaries and modules.

Light on purpose (no torch, no numpy): ``--help``, ``--version`` and the listing of
commands read only this, and a command's module (with the libraries it needs) is imported
only when that command runs (:func:`napari_selfloop.cli.build_parser`).
"""

from __future__ import annotations

#: Sub-command name -> the module under ``napari_selfloop.cli`` whose ``add_parser`` defines
#: it, in the order ``--help`` lists them.
MODULES: dict[str, str] = {
    "init": "init_cmd",
    "pretrain": "pretrain_cmd",
    "pseudo-label": "pseudolabel_cmd",
    "batch": "batch_cmd",
    "train": "train_cmd",
    "calibrate": "calibrate_cmd",
    "evaluate": "evaluate_cmd",
    "evaluate-jigsaw": "evaluate_jigsaw_cmd",
    "export": "export_cmd",
    "models": "models_cmd",
    "gui": "gui_cmd",
}

#: Sub-command name -> its one-line summary (``napari-selfloop --help``).
SUMMARIES: dict[str, str] = {
    "init": "create a new (untrained) model checkpoint",
    "pretrain": "pre-train the jigsaw task (self-supervised, no masks) so self-loop uncertainty carries information",
    "pseudo-label": "pseudo-label images with self-loop uncertainty or a baseline",
    "batch": "pseudo-label many images on a dask cluster (resumable)",
    "train": "fine-tune a model on labelled and unlabelled images (self-loop or a baseline)",
    "calibrate": "choose the foreground cut of a model on annotated images and fold it into a copy",
    "evaluate": "pixel F1 (Dice), balanced accuracy, precision, recall (and object F1, AJI)",
    "evaluate-jigsaw": "mean jigsaw loss (L_SS) and top-1 accuracy of a checkpoint on fixed-seed puzzles",
    "export": "corrected masks or instance labels -> tiled TIFF masks and QuPath GeoJSON",
    "models": "list the bundled starter models (use them by name: --checkpoint nuclei-he)",
    "gui": "open napari with the plugin docked, on a sample image or your images",
}
