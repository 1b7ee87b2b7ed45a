"""SAM2 vision workers: model loading, single-image segmentation and the streaming tracker."""

from workers.vision.image import ImageSegmenter
from workers.vision.loading import SAM2LoadError, load_sam2
from workers.vision.tracker import ObjectState, StepResult, StreamTracker

__all__ = [
    "ImageSegmenter",
    "ObjectState",
    "SAM2LoadError",
    "StepResult",
    "StreamTracker",
    "load_sam2",
]
