"""Headless core of napari-selfloop: torch, numpy, scikit-image and tifffile only.

Nothing in this package may import napari, Qt or magicgui.
"""
