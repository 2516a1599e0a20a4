"""Every figure in README.md and docs/*.md, rendered from committed JSON (`adgen bench report`).

`regions.py` finds and re-renders the marked regions and holds the registry; `sources.py` reads one
figure out of a JSON file; the other modules of this package register the block renderers.
"""
