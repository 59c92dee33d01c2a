"""A synthetic West Yorkshire-like region: five councils, an NHS trust and a police force,
with one population of made-up children appearing consistently across their datasets."""

from tessera.synth.manifest import RegionManifest
from tessera.synth.region import generate_region

__all__ = ["RegionManifest", "generate_region"]
