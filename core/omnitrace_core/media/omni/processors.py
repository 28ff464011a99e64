"""Building a family's transformers processor without torchvision.

transformers 5 type-checks every sub-processor when a processor is constructed, and the
class it checks the video processor against only exists when torchvision is installed, so
``Qwen2_5OmniProcessor(...)`` (or ``AutoProcessor.from_pretrained``) fails on a CPU install
without it even when no video is ever passed. :func:`make_processor` builds the same
processor class with the PIL image processor and our :class:`FrameVideoProcessor`, by
accepting that one stand-in in the type check; everything else (placeholder expansion, audio
features, token type ids) is transformers' own code.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from omnitrace_core.errors import ModelLoadError
from omnitrace_core.media.omni.specs import ModalitySpec
from omnitrace_core.media.omni.video import FrameVideoProcessor


@cache
def _lenient_class(processor_class: type) -> type:
    """``processor_class`` whose constructor accepts a :class:`FrameVideoProcessor`."""

    base_check = processor_class.check_argument_for_proper_class  # type: ignore[attr-defined]

    def check_argument_for_proper_class(self: Any, argument_name: str, argument: Any) -> Any:
        if argument_name == "video_processor" and isinstance(argument, FrameVideoProcessor):
            return FrameVideoProcessor
        return base_check(self, argument_name, argument)

    return type(
        processor_class.__name__,
        (processor_class,),
        {"check_argument_for_proper_class": check_argument_for_proper_class, "__module__": __name__},
    )


def make_processor(
    spec: ModalitySpec,
    tokenizer: Any,
    image_processor: Any,
    feature_extractor: Any = None,
    video_processor: Any = None,
    chat_template: str | None = None,
) -> Any:
    """The family's processor over the given pieces.

    Args:
        spec: The model family (names the processor class).
        tokenizer: The model's tokenizer, with the family's media special tokens.
        image_processor: A Qwen2-VL image processor (the PIL ``Qwen2VLImageProcessorPil``).
        feature_extractor: Audio features (``WhisperFeatureExtractor(feature_size=128)`` for
            Qwen2.5-Omni); required when the family reads audio.
        video_processor: Default: a :class:`FrameVideoProcessor` with the spec's geometry.
        chat_template: The processor's chat template, if any.

    Raises:
        ModelLoadError: if a piece the family needs is missing.
    """
    import transformers

    processor_class = getattr(transformers, spec.processor_class)
    if video_processor is None:
        video_processor = FrameVideoProcessor(
            patch_size=spec.patch_size,
            temporal_patch_size=spec.temporal_patch_size,
            merge_size=spec.merge_size,
            fps=spec.video_fps,
        )
    pieces: dict[str, Any] = {
        "image_processor": image_processor,
        "video_processor": video_processor,
        "tokenizer": tokenizer,
    }
    if "audio" in spec.media:
        if feature_extractor is None:
            raise ModelLoadError(f"{spec.family} reads audio: give its feature extractor")
        pieces["feature_extractor"] = feature_extractor
    cls = processor_class
    if isinstance(video_processor, FrameVideoProcessor):
        cls = _lenient_class(processor_class)
    return cls(**pieces, chat_template=chat_template)


def load_processor(folder: str | Path, spec: ModalitySpec) -> Any:
    """The processor of a local model folder, built without torchvision.

    Reads the tokenizer, ``preprocessor_config.json`` (image processor and, for audio
    families, the Whisper feature extractor), ``video_preprocessor_config.json`` when present
    (frame bounds) and the processor's chat template.

    Raises:
        ModelLoadError: naming the folder and the piece that could not be read.
    """
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil, WhisperFeatureExtractor

    path = Path(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(str(path), local_files_only=True)
        features = (
            WhisperFeatureExtractor.from_pretrained(str(path), local_files_only=True)
            if "audio" in spec.media
            else None
        )
    except Exception as exc:
        raise ModelLoadError(f"cannot read the processor of {spec.family} folder {path}: {exc}") from exc
    return make_processor(
        spec,
        tokenizer,
        image_processor,
        feature_extractor=features,
        video_processor=_video_processor(path, spec),
        chat_template=_chat_template(path),
    )


def _video_processor(path: Path, spec: ModalitySpec) -> FrameVideoProcessor:
    config: dict[str, Any] = {}
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        if (path / name).is_file():
            config = json.loads((path / name).read_text())
            break
    size = config.get("size") or {}
    defaults = FrameVideoProcessor()
    return FrameVideoProcessor(
        min_pixels=int(config.get("min_pixels") or size.get("shortest_edge") or defaults.min_pixels),
        max_pixels=int(config.get("max_pixels") or size.get("longest_edge") or defaults.max_pixels),
        patch_size=int(config.get("patch_size") or spec.patch_size),
        temporal_patch_size=int(config.get("temporal_patch_size") or spec.temporal_patch_size),
        merge_size=int(config.get("merge_size") or spec.merge_size),
        fps=spec.video_fps,
    )


def _chat_template(path: Path) -> str | None:
    if (path / "chat_template.jinja").is_file():
        return (path / "chat_template.jinja").read_text()
    if (path / "chat_template.json").is_file():
        template = json.loads((path / "chat_template.json").read_text()).get("chat_template")
        return str(template) if template else None
    return None
