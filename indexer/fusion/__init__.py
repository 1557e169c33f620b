"""The multimodal fusion model: one learned vector per item from its text, photo, video, brand,
category and price, in the same space as text queries (and photo queries).

``indexer.fusion.train.train_fusion`` trains it on an index's stored vectors; the index keeps
the fused vectors as a per-generation sidecar (``indexer.fusion.sidecar``) that builds, upserts
and the retriever's ``fused`` source use. Modules import torch only when a model is built or
loaded, so importing this package is cheap.
"""

from indexer.fusion.sidecar import (
    FusedIndex,
    fused_stamp,
    has_model,
    load_fused,
    model_dir,
    open_fused,
    refresh_fused,
)

__all__ = ["FusedIndex", "fused_stamp", "has_model", "load_fused", "model_dir", "open_fused", "refresh_fused"]
