"""Encoders: text (sentence-transformers, queries on ONNX Runtime), image (EfficientNet-Lite,
open_clip) and video (sampled frames through an image encoder). Every encoder returns float32,
L2-normalised rows. Heavy libraries (torch, open_clip, PyAV) are imported only when a model is
loaded, so importing this package is cheap."""

from indexer.encoders.base import ImageEncoder, TextEncoder
from indexer.encoders.colour import colour_histogram, colour_histograms
from indexer.encoders.image import (
    EfficientNetLiteEncoder,
    OpenClipImageEncoder,
    load_image_encoder,
    register_open_clip_config,
)
from indexer.encoders.text import (
    PACKAGED_MODEL,
    OnnxTextEncoder,
    SentenceTransformerEncoder,
    default_onnx_cache_dir,
    ensure_onnx_export,
    load_text_encoder,
    resolve_text_model,
)
from indexer.encoders.video import encode_video, sample_video_frames

__all__ = [
    "PACKAGED_MODEL",
    "EfficientNetLiteEncoder",
    "ImageEncoder",
    "OnnxTextEncoder",
    "OpenClipImageEncoder",
    "SentenceTransformerEncoder",
    "TextEncoder",
    "colour_histogram",
    "colour_histograms",
    "default_onnx_cache_dir",
    "encode_video",
    "ensure_onnx_export",
    "load_image_encoder",
    "load_text_encoder",
    "register_open_clip_config",
    "resolve_text_model",
    "sample_video_frames",
]
