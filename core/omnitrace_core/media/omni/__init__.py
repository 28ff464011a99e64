"""Native omni / vision-language models: images, audio and video read by the model itself.

Units are image regions (with pixel boxes), one-second audio bins or caller segments (with
seconds) and one-second video token groups, each owning exactly its prompt tokens. See
``docs/omni.md``.

Example (a loaded model and its processor)::

    from omnitrace_core import Tracer
    from omnitrace_core.media.omni import OmniPromptBuilder

    tracer = Tracer(model, processor.tokenizer, prompt_builder=OmniPromptBuilder.for_model(model, processor))
"""

from omnitrace_core.media.omni.builder import OmniPromptBuilder
from omnitrace_core.media.omni.processors import load_processor, make_processor
from omnitrace_core.media.omni.specs import (
    QWEN2_5_OMNI,
    QWEN2_5_VL,
    QWEN2_VL,
    MediaTokens,
    ModalitySpec,
    known_model_types,
    register_spec,
    spec_for,
    spec_for_model_type,
)
from omnitrace_core.media.omni.video import FrameVideoProcessor

__all__ = [
    "QWEN2_5_OMNI",
    "QWEN2_5_VL",
    "QWEN2_VL",
    "FrameVideoProcessor",
    "MediaTokens",
    "ModalitySpec",
    "OmniPromptBuilder",
    "known_model_types",
    "load_processor",
    "make_processor",
    "register_spec",
    "spec_for",
    "spec_for_model_type",
]
