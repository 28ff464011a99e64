"""Qwen-style video preprocessing of already-sampled frames with PIL and numpy.

transformers' Qwen2-VL video processor needs torchvision (and decoding needs torchcodec); this
package must run on CPU installs without either. :class:`FrameVideoProcessor` stands in for it
inside the family's processor: it takes frames decoded by :mod:`omnitrace_core.media.omni.media` at
the spec's frame rate, resizes each with the same ``smart_resize`` rule, normalises with the
CLIP mean / std and lays the patches out exactly like ``Qwen2VLVideoProcessor.patchify``
(temporal patch, then merged rows, merged columns, merge cell, channel, time, pixels).
Only the resampling filter differs (PIL bicubic instead of torchvision's), so pixel values
may differ slightly from a torchvision install; the token layout does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class FrameVideoProcessor:
    """A torchvision-free stand-in for the Qwen2-VL video processor.

    Args:
        min_pixels: Smallest resized frame area (the processor's ``size["shortest_edge"]``).
        max_pixels: Largest resized frame area (``size["longest_edge"]``).
        patch_size: Vision patch side.
        temporal_patch_size: Frames per temporal patch.
        merge_size: Patches merged per side into one token.
        fps: Rate at which the frames were sampled (reported as the video metadata).
    """

    model_input_names: ClassVar[list[str]] = ["pixel_values_videos", "video_grid_thw"]

    def __init__(
        self,
        min_pixels: int = 128 * 28 * 28,
        max_pixels: int = 768 * 28 * 28,
        patch_size: int = 14,
        temporal_patch_size: int = 2,
        merge_size: int = 2,
        fps: float = 2.0,
    ) -> None:
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.patch_size = patch_size
        self.temporal_patch_size = temporal_patch_size
        self.merge_size = merge_size
        self.fps = fps

    def __call__(self, videos: Any, size: Any = None, return_tensors: Any = None, **_: Any) -> Any:
        """Preprocess a list of videos (each ``(T, H, W, 3)`` uint8 frames).

        ``size`` (``shortest_edge`` / ``longest_edge`` pixel areas) overrides the instance's
        bounds, as the family processor passes its own defaults; other processor keyword
        arguments (``fps``, ``do_sample_frames``...) do not apply to pre-sampled frames.
        """
        import torch
        from transformers.feature_extraction_utils import BatchFeature
        from transformers.video_utils import VideoMetadata

        min_pixels, max_pixels = self._bounds(size)
        clips = [np.asarray(v) for v in (videos if isinstance(videos, (list, tuple)) else [videos])]
        patches, grids, metadata = [], [], []
        for clip in clips:
            if clip.ndim != 4 or clip.shape[-1] != 3:
                raise ValueError(f"a video must be (frames, height, width, 3) RGB, got shape {clip.shape}")
            flat, grid = self.patchify(self.resize_and_normalise(clip, min_pixels, max_pixels))
            patches.append(flat)
            grids.append(grid)
            n = clip.shape[0]
            metadata.append(
                VideoMetadata(
                    total_num_frames=n,
                    fps=self.fps,
                    width=clip.shape[2],
                    height=clip.shape[1],
                    duration=n / self.fps,
                    frames_indices=list(range(n)),
                )
            )
        return BatchFeature(
            {
                "pixel_values_videos": torch.from_numpy(np.concatenate(patches, axis=0)),
                "video_grid_thw": torch.tensor(grids, dtype=torch.long),
                "video_metadata": metadata,
            }
        )

    def _bounds(self, size: Any) -> tuple[int, int]:
        if isinstance(size, Mapping) or hasattr(size, "shortest_edge"):
            get = size.get if isinstance(size, Mapping) else lambda k: getattr(size, k, None)
            low, high = get("shortest_edge"), get("longest_edge")
            return int(low or self.min_pixels), int(high or self.max_pixels)
        return self.min_pixels, self.max_pixels

    def resize_and_normalise(self, clip: np.ndarray, min_pixels: int, max_pixels: int) -> np.ndarray:
        """``(T, H, W, 3)`` uint8 -> ``(T, 3, H', W')`` float32, sides multiples of the token size."""
        from PIL import Image
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        height, width = clip.shape[1], clip.shape[2]
        factor = self.patch_size * self.merge_size
        new_h, new_w = smart_resize(
            height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels
        )
        frames = [
            np.asarray(
                Image.fromarray(frame).resize((new_w, new_h), Image.Resampling.BICUBIC), dtype=np.float32
            )
            for frame in clip
        ]
        mean, std = np.asarray(_CLIP_MEAN, dtype=np.float32), np.asarray(_CLIP_STD, dtype=np.float32)
        out: np.ndarray = (np.stack(frames) / np.float32(255.0) - mean) / std
        return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)

    def patchify(self, video: np.ndarray) -> tuple[np.ndarray, Sequence[int]]:
        """Flatten ``(T, C, H, W)`` into ``(grid_t * grid_h * grid_w, C * tp * ps * ps)`` patches.

        The last frame is repeated to fill the last temporal patch, as transformers does.
        """
        tp, ps, ms = self.temporal_patch_size, self.patch_size, self.merge_size
        if pad := -video.shape[0] % tp:
            video = np.concatenate([video, np.repeat(video[-1:], pad, axis=0)], axis=0)
        frames, channels, height, width = video.shape
        grid_t, grid_h, grid_w = frames // tp, height // ps, width // ps
        patches = video.reshape(grid_t, tp, channels, grid_h // ms, ms, ps, grid_w // ms, ms, ps)
        # (t, tp, C, gh, mh, ph, gw, mw, pw) -> (t, gh, gw, mh, mw, C, tp, ph, pw)
        patches = patches.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
        flat = patches.reshape(grid_t * grid_h * grid_w, channels * tp * ps * ps)
        return np.ascontiguousarray(flat, dtype=np.float32), (grid_t, grid_h, grid_w)
