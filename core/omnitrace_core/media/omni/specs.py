"""Per-family facts about how an omni / vision-language model lays media out in its prompt.

A :class:`ModalitySpec` is everything the prompt builder needs to know about one model family
that the processor does not tell it directly: the placeholder text that marks where each
medium goes (its open / pad / close special tokens), how many prompt tokens one second of
audio becomes, and the vision geometry (patch, merge and temporal patch sizes, video frame
rate) that turns a run of pad tokens back into image regions or seconds of video.

Adding a family is one :class:`ModalitySpec` registered with :func:`register_spec` (see
``docs/omni.md``); nothing else in the pipeline is family-specific.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omnitrace_core.errors import UnsupportedModalityError


@dataclass(frozen=True)
class MediaTokens:
    """The special tokens around one medium in the prompt.

    Attributes:
        open: Token placed before the medium (``<|vision_start|>``).
        pad: Placeholder token the processor repeats once per medium token (``<|image_pad|>``).
        close: Token placed after the medium (``<|vision_end|>``).
    """

    open: str
    pad: str
    close: str

    @property
    def placeholder(self) -> str:
        """What the prompt text holds before the processor expands the pad token."""
        return f"{self.open}{self.pad}{self.close}"


@dataclass(frozen=True)
class ModalitySpec:
    """How one model family reads images, audio and video.

    Attributes:
        family: Human-readable family name, used in messages (``qwen2.5-omni``).
        model_types: ``config.model_type`` values of the models of this family.
        processor_class: Name of the transformers processor class (built without torchvision
            by :func:`omnitrace_core.media.omni.processors.make_processor`).
        model_class: Name of the transformers model class that generates text.
        media: Special tokens per modality the model reads (``image``, ``audio``, ``video``).
        audio_tokens_per_second: Audio prompt tokens per second of sound (Qwen2.5-Omni: 25,
            i.e. 40 ms each: 100 mel frames/s, then two stride-2 stages).
        sampling_rate: Audio sampling rate the feature extractor expects.
        patch_size: Vision patch side in resized pixels.
        merge_size: Patches merged per side into one prompt token (2: a token covers 28x28 px).
        temporal_patch_size: Video frames per temporal patch (one token group).
        video_fps: Frames per second sampled from a video (2 fps with temporal patch 2 makes
            one token group per second).
        audio_in_video: The model can interleave a video's audio track with its frames
            (``use_audio_in_video``).
        config_token_ids: Model-config attribute holding each modality's pad token id, checked
            against the tokenizer so a mismatched processor fails loudly.
    """

    family: str
    model_types: tuple[str, ...]
    processor_class: str
    model_class: str
    media: Mapping[str, MediaTokens]
    audio_tokens_per_second: float = 25.0
    sampling_rate: int = 16000
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    video_fps: float = 2.0
    audio_in_video: bool = False
    config_token_ids: Mapping[str, str] = field(default_factory=dict)

    @property
    def modalities(self) -> frozenset[str]:
        """Media modalities the family reads natively."""
        return frozenset(self.media)

    @property
    def token_pixels(self) -> int:
        """Side, in resized pixels, of the square one merged vision token covers."""
        return self.patch_size * self.merge_size

    @property
    def seconds_per_video_group(self) -> float:
        """Seconds of video one temporal token group covers."""
        return self.temporal_patch_size / self.video_fps

    def tokens(self, modality: str, model_name: str) -> MediaTokens:
        """The special tokens of ``modality``.

        Raises:
            UnsupportedModalityError: naming the model and the modality.
        """
        if modality not in self.media:
            reads = ", ".join(sorted(self.media)) or "text only"
            raise UnsupportedModalityError(
                f"model {model_name!r} ({self.family}) cannot take {modality} sources; it reads {reads}"
            )
        return self.media[modality]


_QWEN_VL_MEDIA = {
    "image": MediaTokens("<|vision_start|>", "<|image_pad|>", "<|vision_end|>"),
    "video": MediaTokens("<|vision_start|>", "<|video_pad|>", "<|vision_end|>"),
}
_QWEN_VL_IDS = {"image": "image_token_id", "video": "video_token_id"}

QWEN2_VL = ModalitySpec(
    family="qwen2-vl",
    model_types=("qwen2_vl",),
    processor_class="Qwen2VLProcessor",
    model_class="Qwen2VLForConditionalGeneration",
    media=_QWEN_VL_MEDIA,
    config_token_ids=_QWEN_VL_IDS,
)

QWEN2_5_VL = ModalitySpec(
    family="qwen2.5-vl",
    model_types=("qwen2_5_vl",),
    processor_class="Qwen2_5_VLProcessor",
    model_class="Qwen2_5_VLForConditionalGeneration",
    media=_QWEN_VL_MEDIA,
    config_token_ids=_QWEN_VL_IDS,
)

QWEN2_5_OMNI = ModalitySpec(
    family="qwen2.5-omni",
    # A full Qwen2.5-Omni folder is "qwen2_5_omni" (thinker + talker); only the thinker is traced.
    model_types=("qwen2_5_omni_thinker", "qwen2_5_omni"),
    processor_class="Qwen2_5OmniProcessor",
    model_class="Qwen2_5OmniThinkerForConditionalGeneration",
    media={
        "image": MediaTokens("<|vision_bos|>", "<|IMAGE|>", "<|vision_eos|>"),
        "video": MediaTokens("<|vision_bos|>", "<|VIDEO|>", "<|vision_eos|>"),
        "audio": MediaTokens("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"),
    },
    audio_in_video=True,
    config_token_ids={"image": "image_token_id", "video": "video_token_id", "audio": "audio_token_id"},
)

_REGISTRY: dict[str, ModalitySpec] = {}


def register_spec(spec: ModalitySpec) -> None:
    """Make a family known by each of its ``model_types`` (a later registration wins)."""
    for model_type in spec.model_types:
        _REGISTRY[model_type] = spec


for _spec in (QWEN2_VL, QWEN2_5_VL, QWEN2_5_OMNI):
    register_spec(_spec)


def known_model_types() -> list[str]:
    """Every registered ``config.model_type``."""
    return sorted(_REGISTRY)


def spec_for_model_type(model_type: str) -> ModalitySpec | None:
    """The spec registered for ``model_type``, or None."""
    return _REGISTRY.get(model_type)


def spec_for(model: Any) -> ModalitySpec:
    """The spec of a loaded model, by its ``config.model_type``.

    Raises:
        UnsupportedModalityError: if the model's family is not registered (a text model).
    """
    model_type = str(getattr(getattr(model, "config", None), "model_type", ""))
    spec = _REGISTRY.get(model_type)
    if spec is None:
        raise UnsupportedModalityError(
            f"model {type(model).__name__} (model_type {model_type!r}) is not a known omni / "
            f"vision-language family; known: {', '.join(known_model_types())}"
        )
    return spec
