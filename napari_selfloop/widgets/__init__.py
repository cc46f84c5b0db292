"""napari widgets of napari-selfloop: thin panels over :mod:`napari_selfloop.core`.

One file per panel; shared per-viewer state in :mod:`._state`, the background-run helper
in :mod:`._runner`, layer helpers in :mod:`._layers`. Only the main thread touches layers.
"""
