"""Data curation: clean, filter, scrub, deduplicate, decontaminate, mix and split, with a data card.

``affinage data curate CONFIG.yaml`` runs :func:`curate` on a :class:`CurateConfig`; every step is a
small class in its own module, registered in :data:`affinage.curation.steps.STEPS`.
"""

from affinage.curation.config import CurateConfig, MixConfig, OutputConfig, SourceConfig, SplitConfig
from affinage.curation.pipeline import CurationResult, curate

__all__ = [
    "CurateConfig",
    "CurationResult",
    "MixConfig",
    "OutputConfig",
    "SourceConfig",
    "SplitConfig",
    "curate",
]
