"""Reading and writing pixels: images and slides (lazily), regions of them, tiled TIFFs,
label files that remember where they lie, atomic writes, synthetic slides."""
