"""The synthetic ad world: a seeded generator of ads, content, users and their event streams.

`generate_world(WorldConfig(...), out_dir)` writes the directory format documented in
docs/data-formats.md; `adgen.datasets.load_world` reads it back as a `Dataset`.
"""

from adgen.world.config import WorldConfig
from adgen.world.generator import GENERATOR_VERSION, generate_world

__all__ = ["GENERATOR_VERSION", "WorldConfig", "generate_world"]
