"""napari-selfloop: self-loop uncertainty pseudo-labels for annotation in napari."""

__version__ = "0.1.0"
