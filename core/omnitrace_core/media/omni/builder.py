"""The prompt builder of omni / vision-language models: processor in, units with exact spans out.

:class:`OmniPromptBuilder` implements :class:`~omnitrace_core.prompting.PromptBuilder`. It
writes the sources in order into one chat message (media as the family's placeholders,
:mod:`omnitrace_core.media.omni.message`), lets the family's own transformers processor expand the
placeholders and compute pixel / audio features, then finds every medium's pad tokens through
the processor's replacement offsets and cuts them into units
(:mod:`omnitrace_core.media.omni.units`). Text sources in the same prompt stay text units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omnitrace_core.config import TracerConfig
from omnitrace_core.errors import InvalidInputError
from omnitrace_core.log import get_logger
from omnitrace_core.media.omni import media as media_io
from omnitrace_core.media.omni.message import MediaSlot, UserMessage, compose_message
from omnitrace_core.media.omni.specs import ModalitySpec, spec_for
from omnitrace_core.media.omni.units import image_region_units, time_bin_units, video_group_units
from omnitrace_core.sources import MediaSource, PromptLayout, Source, SourceUnit

logger = get_logger()

# Processor outputs that are not model inputs (the tracer passes input_ids / attention_mask).
_NOT_MODEL_INPUTS = frozenset({"input_ids", "attention_mask", "text_replacement_offsets", "video_metadata"})
# Floating inputs that follow the model's dtype (positions-like floats such as
# ``second_per_grid_ts`` must stay fp32).
_PIXEL_INPUTS = frozenset({"pixel_values", "pixel_values_videos", "input_features"})


@dataclass
class _Media:
    """A media slot with its decoded content."""

    slot: MediaSlot
    content: Any  # PIL image, audio samples or DecodedVideo
    audio: Any = None  # a video's audio track, when the model hears it


class OmniPromptBuilder:
    """Lays sources out for an omni / vision-language model and locates every unit.

    Args:
        processor: The family's transformers processor (:func:`omnitrace_core.media.omni.processors.
            make_processor` or ``load_processor`` build one without torchvision).
        spec: The model family.
        model_name: Named in errors.
        image_regions: Region rows x columns an image is cut into (fewer on small grids).
        audio_bin_seconds: Length of an audio bin when the source has no segments.
        audio_in_video: Let the model hear a video's audio track when the family can.
        device: Where the model inputs go (default: the model's device, read at each build
            so that a model moved after the builder was made still gets its inputs).
        dtype: Floating dtype of pixel / audio features (default: the model's dtype).
        model: The model the prompts are for (:meth:`for_model` sets it).
    """

    def __init__(
        self,
        processor: Any,
        spec: ModalitySpec,
        *,
        model_name: str | None = None,
        image_regions: tuple[int, int] = (3, 3),
        audio_bin_seconds: float = 1.0,
        audio_in_video: bool = True,
        device: Any = None,
        dtype: Any = None,
        model: Any = None,
    ) -> None:
        if image_regions[0] < 1 or image_regions[1] < 1:
            raise InvalidInputError(f"image_regions must be at least (1, 1), got {image_regions}")
        if audio_bin_seconds <= 0:
            raise InvalidInputError(f"audio_bin_seconds must be > 0, got {audio_bin_seconds}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.spec = spec
        self.model_name = model_name or spec.family
        self.image_regions = image_regions
        self.audio_bin_seconds = audio_bin_seconds
        self.audio_in_video = audio_in_video and spec.audio_in_video and "audio" in spec.media
        self.device = device
        self.dtype = dtype
        self.model = model
        self.modalities: frozenset[str] = spec.modalities
        self.pad_ids = {m: self._token_id(t.pad) for m, t in spec.media.items()}

    @classmethod
    def for_model(cls, model: Any, processor: Any, **kwargs: Any) -> OmniPromptBuilder:
        """A builder for a loaded model: its family, name, device and dtype, with the
        tokenizer's media token ids checked against the model config.

        Raises:
            UnsupportedModalityError: if the model is not of a registered family.
            InvalidInputError: if the processor's media tokens are not the model's.
        """
        spec = spec_for(model)
        name = str(getattr(model.config, "name_or_path", "") or type(model).__name__)
        kwargs.setdefault("model_name", name)
        builder = cls(processor, spec, model=model, **kwargs)
        config = getattr(model.config, "thinker_config", model.config)
        for modality, attr in spec.config_token_ids.items():
            expected = getattr(config, attr, None)
            if expected is not None and int(expected) != builder.pad_ids[modality]:
                raise InvalidInputError(
                    f"the processor's {modality} token {spec.media[modality].pad!r} is id "
                    f"{builder.pad_ids[modality]}, but model {name!r} expects id {expected} ({attr}): "
                    "use the processor saved with this model"
                )
        return builder

    def _token_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise InvalidInputError(
                f"the tokenizer of {self.model_name!r} has no {token!r} token "
                f"(a {self.spec.family} media token)"
            )
        return int(token_id)

    # -- PromptBuilder ---------------------------------------------------------------------
    def build(self, sources: Sequence[Source], question: str, config: TracerConfig) -> PromptLayout:
        """Tokenise the prompt through the processor and locate every unit.

        Raises:
            InvalidInputError: for an empty question or a prompt whose units cannot be located.
            UnsupportedModalityError: for a modality the family does not read.
            MediaError: for a missing or corrupt media file (naming the source).
        """
        if question is None or not question.strip():
            raise InvalidInputError("question is empty")
        message = compose_message(sources, question, self.spec, self.model_name, config.split_sources)
        decoded = [self._decode(slot) for slot in message.slots]
        with_audio_track = self.audio_in_video and any(d.audio is not None for d in decoded)
        if with_audio_track and any(d.slot.source.modality == "video" and d.audio is None for d in decoded):
            logger.warning("audio_in_video_off", reason="a video in the prompt has no audio track")
            with_audio_track = False
        text, user_at = self._render(message, config.system_prompt)
        outputs = self._run_processor(text, decoded, with_audio_track)
        ids = [int(t) for t in outputs["input_ids"][0].tolist()]
        replacements = list(outputs["text_replacement_offsets"][0])
        offsets = self._token_offsets(text, replacements, ids)
        units = self._text_units(message, user_at, replacements, offsets)
        units += self._media_units(decoded, replacements, outputs, ids, offsets, with_audio_track)
        units.sort(key=lambda u: u.token_start)
        self._check_disjoint(units)
        last = max(u.token_end for u in units)
        model_inputs = self._model_inputs(outputs, with_audio_track)
        asked: list[int] = []
        q_at = text.rfind(question.strip())
        if q_at >= user_at:  # the question follows every source in the user message
            a = _shift(q_at, replacements)
            b = _shift(q_at + len(question.strip()), replacements)
            spans = ((i, offsets[i]) for i in range(last, len(ids)))
            asked = [i for i, (s, e) in spans if s < min(e, b) and e > a]
        return PromptLayout(
            input_ids=ids,
            units=units,
            reference_positions=list(range(last, len(ids))),
            text=text,
            model_inputs=model_inputs,
            question_positions=asked,
        )

    # -- steps -----------------------------------------------------------------------------
    def _decode(self, slot: MediaSlot) -> _Media:
        src, spec = slot.source, self.spec
        if src.modality == "image":
            return _Media(slot, media_io.load_image(src))
        if src.modality == "audio":
            return _Media(slot, media_io.load_audio(src, spec.sampling_rate))
        video = media_io.load_video(src, spec.video_fps, spec.sampling_rate, with_audio=self.audio_in_video)
        return _Media(slot, video, audio=video.audio)

    def _render(self, message: UserMessage, system_prompt: str | None) -> tuple[str, int]:
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": message.text}
        ]
        template = getattr(self.processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None
        )
        if template:
            text = self.tokenizer.apply_chat_template(
                messages, chat_template=template, tokenize=False, add_generation_prompt=True
            )
        else:
            text = (system_prompt + "\n\n" if system_prompt else "") + message.text + "\nAnswer: "
        user_at = text.rfind(message.text)  # the last message: not a quote of it in the system prompt
        if user_at < 0:
            raise InvalidInputError("the chat template altered the user message; cannot locate the sources")
        return text, user_at

    def _run_processor(self, text: str, decoded: list[_Media], with_audio_track: bool) -> Any:
        images = [d.content for d in decoded if d.slot.source.modality == "image"]
        videos = [d.content.frames for d in decoded if d.slot.source.modality == "video"]
        audio: list[Any] = []
        audio_from_video: list[int | None] = []
        n_video = 0
        for d in decoded:  # audio slots in prompt order: standalone clips and video tracks
            if d.slot.source.modality == "audio":
                audio.append(d.content)
                audio_from_video.append(None)
            elif d.slot.source.modality == "video":
                if with_audio_track:
                    audio.append(d.audio)
                    audio_from_video.append(n_video)
                n_video += 1
        kwargs: dict[str, Any] = {"return_tensors": "pt", "return_text_replacement_offsets": True}
        if audio:
            kwargs["audio"] = audio
        if with_audio_track:
            kwargs["load_audio_from_video"] = True
            kwargs["audio_from_video_indices"] = audio_from_video
        try:
            return self.processor(text=[text], images=images or None, videos=videos or None, **kwargs)
        except (ValueError, TypeError, IndexError) as exc:
            names = ", ".join(repr(d.slot.source.id) for d in decoded) or "none"
            raise InvalidInputError(
                f"the {self.spec.family} processor rejected the prompt (media sources: {names}): {exc}"
            ) from exc

    def _token_offsets(
        self, text: str, replacements: list[dict[str, Any]], ids: list[int]
    ) -> list[tuple[int, int]]:
        """Each prompt token's character span in the expanded prompt (placeholders replaced)."""
        pieces, last = [], 0
        for rep in replacements:
            a, b = rep["span"]
            pieces += [text[last:a], rep["replacement"]]
            last = b
        expanded = "".join([*pieces, text[last:]])
        enc = self.tokenizer(expanded, return_offsets_mapping=True)
        if list(enc["input_ids"]) != ids:
            raise InvalidInputError(
                "re-tokenising the processor's prompt gave different tokens; cannot locate the units"
            )
        return [(int(s), int(e)) for s, e in enc["offset_mapping"]]

    def _text_units(
        self,
        message: UserMessage,
        user_at: int,
        replacements: list[dict[str, Any]],
        offsets: list[tuple[int, int]],
    ) -> list[SourceUnit]:
        units: list[SourceUnit] = []
        prev_end = 0
        for piece in message.pieces:
            a = _shift(user_at + piece.start, replacements)
            b = _shift(user_at + piece.end, replacements)
            toks = [i for i, (s, e) in enumerate(offsets) if e > s and s < b and e > a]
            if not toks:
                raise InvalidInputError(f"source {piece.unit.source_id!r} produced no prompt tokens")
            start = max(toks[0], prev_end)  # a token straddling two units belongs to the first
            units.append(piece.unit.model_copy(update={"token_start": start, "token_end": toks[-1] + 1}))
            prev_end = toks[-1] + 1
        return units

    def _media_units(
        self,
        decoded: list[_Media],
        replacements: list[dict[str, Any]],
        outputs: Any,
        ids: list[int],
        offsets: list[tuple[int, int]],
        with_audio_track: bool,
    ) -> list[SourceUnit]:
        by_type: dict[str, list[dict[str, Any]]] = {}
        for rep in replacements:
            by_type.setdefault(str(rep["type"]), []).append(rep)
        seen = {"image": 0, "audio": 0, "video": 0}
        units: list[SourceUnit] = []
        for d in decoded:
            src = d.slot.source
            k = seen[src.modality]
            seen[src.modality] += 1
            reps = by_type.get(src.modality, [])
            if k >= len(reps):
                raise InvalidInputError(
                    f"the processor did not expand the {src.modality} of source {src.id!r}"
                )
            a, b = reps[k]["new_span"]
            inside = [i for i, (s, e) in enumerate(offsets) if s >= a and e <= b and e > s]

            def pads(modality: str, inside: list[int] = inside) -> list[int]:
                return [i for i in inside if ids[i] == self.pad_ids[modality]]

            if src.modality == "image":
                units += image_region_units(
                    src,
                    pads("image"),
                    outputs["image_grid_thw"][k].tolist(),
                    # A loader that shrinks huge images records the file's size: boxes use it.
                    d.content.info.get("original_size", d.content.size),
                    self.spec,
                    self.image_regions,
                )
            elif src.modality == "audio":
                duration = len(d.content) / self.spec.sampling_rate
                units += self._audio_units(src, pads("audio"), duration, 0)
            else:
                video_units = video_group_units(
                    src, pads("video"), outputs["video_grid_thw"][k].tolist(), d.content.duration, self.spec
                )
                units += video_units
                if with_audio_track and d.audio is not None:
                    duration = len(d.audio) / self.spec.sampling_rate
                    units += self._audio_units(src, pads("audio"), duration, len(video_units))
        return units

    def _audio_units(
        self, src: MediaSource, positions: list[int], duration: float, first: int
    ) -> list[SourceUnit]:
        if not positions:
            raise InvalidInputError(f"{src.modality} source {src.id!r} produced no audio tokens")
        if duration > len(positions) / self.spec.audio_tokens_per_second + 1.0:
            logger.warning(
                "audio_truncated",
                source=src.id,
                seconds=round(duration, 2),
                encoded_seconds=round(len(positions) / self.spec.audio_tokens_per_second, 2),
            )
        return time_bin_units(
            src,
            positions,
            self.spec.audio_tokens_per_second,
            duration,
            segments=src.segments,
            bin_seconds=self.audio_bin_seconds,
            first_index=first,
        )

    def _model_inputs(self, outputs: Any, with_audio_track: bool) -> dict[str, Any]:
        device = self.device if self.device is not None else getattr(self.model, "device", None)
        dtype = self.dtype if self.dtype is not None else getattr(self.model, "dtype", None)
        inputs: dict[str, Any] = {}
        for key, value in outputs.items():
            if key in _NOT_MODEL_INPUTS:
                continue
            if hasattr(value, "to"):
                if key in _PIXEL_INPUTS and dtype is not None and value.is_floating_point():
                    value = value.to(dtype)
                if device is not None:
                    value = value.to(device)
            inputs[key] = value
        if with_audio_track:
            inputs["use_audio_in_video"] = True
        return inputs

    @staticmethod
    def _check_disjoint(units: list[SourceUnit]) -> None:
        owner: dict[int, str] = {}
        for u in units:
            for p in getattr(u, "token_positions", None) or range(u.token_start, u.token_end):
                if p in owner:
                    raise InvalidInputError(
                        f"units {owner[p]!r} and {u.unit_id!r} both claim prompt token {p}"
                    )
                owner[p] = u.unit_id


def _shift(position: int, replacements: list[dict[str, Any]]) -> int:
    """A character position of the unexpanded prompt, in the expanded prompt."""
    shift = 0
    for rep in replacements:
        a, b = rep["span"]
        if b <= position:
            shift += len(rep["replacement"]) - (b - a)
    return position + shift
