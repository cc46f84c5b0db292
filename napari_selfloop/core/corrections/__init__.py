"""A person's corrections as data: nuclei as objects and their edits, the uncertain
regions, what Review walks through."""
