"""Reading and writing pixels: the check at the door of input files, images and slides
(lazily, sharing which TIFF series is the image), regions of them, tiled TIFFs, label files
that remember where they lie, atomic writes, synthetic slides."""
