"""StreamTracker and ImageSegmenter behaviour: flat memory, independent objects, one encode per
frame, decoder-only clicks, and clear errors."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psutil
import pytest
import torch

from tests.sam2_reference import synthetic_clip
from workers.masks import mask_to_box
from workers.vision import ImageSegmenter, StreamTracker, load_sam2
from workers.vision.encoder import encode_image
from workers.vision.memory import memory_reach, pointer_reach

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

IMAGE_SIZE = 64  # the smallest useful SAM2 input; behaviour, not quality, is under test
CLIP = synthetic_clip(40, height=48, width=64)
DISC, SQUARE = (19.0, 17.0), (43.0, 30.0)


@pytest.fixture(scope="module")
def model() -> Iterator[Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see test_vision_equivalence: stable on a shared 2-core machine
    yield load_sam2(
        size="tiny", weights="random", device="cpu", image_size=IMAGE_SIZE, seed=0, precision="fp32"
    )
    torch.set_num_threads(threads)


@pytest.fixture
def encodes(model: Any) -> Iterator[Callable[[], int]]:
    """Counts image-encoder runs on the shared model (its patch embedding starts every one)."""
    calls = 0

    def count(*_: Any) -> None:
        nonlocal calls
        calls += 1

    hook = model.image_encoder.trunk.patch_embed.register_forward_pre_hook(count)
    yield lambda: calls
    hook.remove()


def frames(n: int) -> Iterator[np.ndarray]:
    for i in range(n):
        yield CLIP[i % len(CLIP)]


def stepped(tracker: StreamTracker, n: int, *points: tuple[float, float]) -> Iterator[int]:
    """Step `tracker` through the first n frames, adding one object per point on frame 0; yields
    each frame's index once it is stepped."""
    for i, frame in enumerate(frames(n)):
        tracker.step(frame)
        if i == 0:
            for point in points:
                tracker.add_object(points=[point])
        yield i


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


# -- memory -------------------------------------------------------------------------------------


def test_memory_banks_stop_growing(model: Any) -> None:
    tracker = StreamTracker(model)
    sizes = [tracker.memory_sizes() for _ in stepped(tracker, 80, DISC, SQUARE)]
    reach = max(memory_reach(model), pointer_reach(model))
    for per_obj in sizes[reach + 5 :]:
        assert per_obj == sizes[-1]
    for cond, other in sizes[-1].values():
        assert cond == 1 and other == reach + 1  # the clicked frame + the frames still read


def test_clicked_frames_are_capped_at_the_most_recent(model: Any) -> None:
    tracker = StreamTracker(model, max_cond_frames=3, corrections_as_cond=True)
    for i, frame in enumerate(frames(12)):
        tracker.step(frame)
        if i == 0:
            obj = tracker.add_object(points=[DISC])
        else:
            tracker.refine(obj, points=[DISC], labels=[1])  # a correction click on every frame
    tracker.step(CLIP[12])  # encodes the last click into memory
    bank = tracker._tracks[obj].bank
    assert sorted(bank.cond) == [9, 10, 11]


@pytest.mark.slow
def test_rss_is_flat_over_a_long_stream(model: Any) -> None:
    tracker = StreamTracker(model)
    for i in stepped(tracker, 300, DISC, SQUARE):
        if i == 100:
            baseline = rss_mb()
    # Keeping each frame's output (as the official predictor does; memory features, pointer,
    # logits, ~6 KiB per object at this size) would add ~2.4 MiB over these 200 frames x 2
    # objects, its resized frames 8 MiB more. The full 3,000-frame figure is in
    # benchmarks/tracking.py.
    assert rss_mb() - baseline < 2.0


def test_memory_keys_are_projected_once_per_stored_memory(model: Any) -> None:
    # sam2 projects every memory it attends to on every frame (7 per object here); ours only
    # the one new memory per object, plus the pointer tokens
    tracker = StreamTracker(model)
    rows = []
    hook = model.memory_attention.layers[0].cross_attn_image.k_proj.register_forward_hook(
        lambda _m, args, _o: rows.append(args[0].shape[0] * args[0].shape[1])
    )
    try:
        for i, frame in enumerate(frames(14)):
            rows.clear()
            tracker.step(frame)
            if i == 0:
                tracker.add_object(points=[DISC])
                tracker.add_object(points=[SQUARE])
    finally:
        hook.remove()
    hw = (IMAGE_SIZE // 16) ** 2
    pointers = model.max_obj_ptrs_in_encoder * (model.hidden_dim // model.mem_dim)
    assert 0 < sum(rows) <= 2 * (hw + pointers)  # new memory + pointer tokens, per object


# keys_with_pos False: a layout whose memory keys carry no position (nor age) encoding;
# by_memory: the CPU's attention over each cached memory in place, or the one-buffer path
@pytest.mark.parametrize("by_memory", [True, False])
@pytest.mark.parametrize(("n_objects", "keys_with_pos"), [(1, True), (3, True), (2, False)])
def test_cached_memory_attention_equals_sam2s(
    model: Any,
    n_objects: int,
    keys_with_pos: bool,
    by_memory: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.vision import attention, batching

    for layer in model.memory_attention.layers:
        monkeypatch.setattr(layer, "pos_enc_at_cross_attn_keys", keys_with_pos)

    tracker = StreamTracker(model)
    points = [DISC, SQUARE, (10.0, 40.0)][:n_objects]
    for i, frame in enumerate(frames(12)):
        tracker.step(frame)
        if i == 0:
            ids = [tracker.add_object(points=[p]) for p in points]
        if i == 5:  # a second clicked frame for every object (one batch needs equal shapes)
            for obj_id in ids:
                tracker.refine(obj_id, points=[(30.0, 30.0)], labels=[0])
    with torch.inference_mode():
        idx = tracker._newest_idx + 1
        image = _image(CLIP[12])
        tracker._session["cached_features"] = {idx: (image, encode_image(model, image))}
        recorded = [
            batching._memory_inputs(model, tracker._session, idx, tracker._tracks[i].bank, False)
            for i in ids
        ]
        inputs = [attention.resolve_inputs(model, kwargs, read) for kwargs, read in recorded]
        assert all(inp is not None for inp in inputs)
        ours = attention.attend(model, inputs, by_memory=by_memory)
        theirs = torch.cat([model.memory_attention(**kwargs) for kwargs, _ in recorded], dim=1)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), float((ours - theirs).abs().max())


def _image(frame: np.ndarray) -> torch.Tensor:
    from workers.vision.inputs import video_frame_tensor

    return video_frame_tensor(frame, IMAGE_SIZE, torch.device("cpu"))


# -- independence, encoder once per frame, decoder-only clicks ----------------------------------


@pytest.mark.parametrize("batch_objects", [False, True])  # one by one, and batched with B
def test_objects_are_independent(model: Any, batch_objects: bool) -> None:
    def run(with_b: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        tracker = StreamTracker(model, batch_objects=batch_objects)
        a_states = []
        for i, frame in enumerate(frames(30)):
            tracker.step(frame)
            if i == 0:
                a = tracker.add_object(points=[DISC])
            if with_b and i == 5:
                b = tracker.add_object(points=[SQUARE])
            if with_b and i == 8:
                tracker.refine(b, points=[(40.0, 28.0)], labels=[0])
            if with_b and i == 20:
                tracker.remove(b)
            state = tracker.objects[a]
            a_states.append((state.mask, state.low_res_logits))
        return a_states

    alone, together = run(with_b=False), run(with_b=True)
    for i, ((mask_alone, logits_alone), (mask_with, logits_with)) in enumerate(
        zip(alone, together, strict=True)
    ):
        assert np.array_equal(mask_alone, mask_with), f"frame {i}"
        if batch_objects:  # batched attention may reorder float sums
            assert np.abs(logits_alone - logits_with).max() < 1e-4, f"frame {i}"
        else:
            assert np.array_equal(logits_alone, logits_with), f"frame {i}"


def test_image_encoder_runs_once_per_frame(model: Any, encodes: Callable[[], int]) -> None:
    tracker = StreamTracker(model)
    for i, frame in enumerate(frames(6)):
        tracker.step(frame)
        if i == 0:
            for point in (DISC, SQUARE, (10.0, 40.0)):
                tracker.add_object(points=[point])
    assert encodes() == 6


def test_clicks_reuse_the_cached_frame_features(model: Any, encodes: Callable[[], int]) -> None:
    tracker = StreamTracker(model)
    tracker.step(CLIP[0])
    tracker.step(CLIP[1])
    before = encodes()
    a = tracker.add_object(points=[DISC])
    tracker.refine(a, points=[(30.0, 30.0)], labels=[0])
    b = tracker.add_object(box=(30.0, 20.0, 60.0, 45.0))
    assert set(tracker.objects) == {a, b}  # clicks show at once, no new step
    assert encodes() == before
    tracker.step(CLIP[2])
    assert encodes() == before + 1


def test_image_segmenter_encodes_once(model: Any, encodes: Callable[[], int]) -> None:
    seg = ImageSegmenter(model)
    seg.set_image(CLIP[3])
    for point in (DISC, SQUARE, (5.0, 5.0)):
        mask, score = seg.segment(points=[point], labels=[1])
        assert mask.shape == (48, 64) and mask.dtype == bool and isinstance(score, float)
    seg.segment(box=(10.0, 10.0, 40.0, 40.0))
    assert encodes() == 1


def test_two_trackers_share_one_model(model: Any) -> None:
    def run_alone(point: tuple[float, float]) -> list[np.ndarray]:
        tracker = StreamTracker(model)
        return [
            next(iter(tracker.objects.values())).low_res_logits for _ in stepped(tracker, 8, point)
        ]

    first, second = StreamTracker(model), StreamTracker(model)
    interleaved: tuple[list, list] = ([], [])
    for i, frame in enumerate(frames(8)):
        for tracker, point, out in zip((first, second), (DISC, SQUARE), interleaved, strict=True):
            tracker.step(frame)
            if i == 0:
                tracker.add_object(points=[point])
            out.append(next(iter(tracker.objects.values())).low_res_logits)
    for alone, shared in zip((run_alone(DISC), run_alone(SQUARE)), interleaved, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(alone, shared, strict=True))


# -- the public surface -------------------------------------------------------------------------


def test_step_result_and_object_state(model: Any) -> None:
    tracker = StreamTracker(model)
    assert tracker.frame_size is None and tracker.frame_index is None and tracker.objects == {}
    first = tracker.step(CLIP[0])
    assert first.frame_index == 0 and first.objects == {}
    a = tracker.add_object(points=[DISC], labels=[1])
    b = tracker.add_object(points=[SQUARE], labels=[1], box=(30.0, 20.0, 60.0, 45.0))
    c = tracker.add_object(points=[(5.0, 5.0)], obj_id=10)
    assert (a, b, c) == (1, 2, 10)
    assert tracker.add_object(points=[(6.0, 6.0)]) == 11  # ids are never reused
    result = tracker.step(CLIP[1])
    assert result.frame_index == 1 and list(result.objects) == [1, 2, 10, 11]
    assert tracker.frame_size == (64, 48) and tracker.last_step_ms > 0.0
    for state in result.objects.values():
        assert state.mask.shape == (48, 64) and state.mask.dtype == bool
        assert 0.0 <= state.score <= 1.0 and state.present == (state.score > 0.5)
        assert state.box == mask_to_box(state.mask)
    tracker.remove(a)
    assert list(tracker.objects) == [2, 10, 11]
    # a new frame size mid-stream (a camera renegotiating) gives masks of the new size
    small = CLIP[2][::2, ::-2]  # a strided view, as from a crop or a channel flip
    assert tracker.step(small).objects[2].mask.shape == (24, 32)


@pytest.mark.parametrize(
    "call, message",
    [
        # prompts before any frame
        (lambda t: t.add_object(points=[DISC]), "add_object needs a frame"),
        (lambda t: t.refine(1, points=[DISC]), "refine needs a frame"),
        # frames of the wrong shape or dtype
        (
            lambda t: t.step(np.zeros((48, 64), np.uint8)),
            r"shape H x W x 3 \(RGB\), got \(48, 64\)",
        ),
        (lambda t: t.step(np.zeros((48, 64, 4), np.uint8)), r"got \(48, 64, 4\)"),
        (lambda t: t.step(np.zeros((48, 64, 3), np.float32)), "dtype uint8, got float32"),
        (lambda t: t.step([[0, 0, 0]]), "numpy array, got list"),
    ],
)
def test_errors_before_a_frame(model: Any, call: Callable, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(StreamTracker(model))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: t.add_object(points=[(64.0, 10.0)]), r"click \(64, 10\) is outside the 64x48"),
        (lambda t: t.add_object(points=[(10.0, -1.0)]), "outside the 64x48 frame"),
        (lambda t: t.add_object(box=(10.0, 10.0, 70.0, 40.0)), "inside the 64x48 frame"),
        (lambda t: t.add_object(box=(30.0, 10.0, 20.0, 40.0)), "x0 < x1"),
        (lambda t: t.add_object(), "at least one point or a box"),
        (lambda t: t.add_object(points=[DISC], labels=[1, 0]), "1 points but 2 labels"),
        (lambda t: t.add_object(points=[DISC], labels=[2]), "labels must be 1"),
        (lambda t: t.add_object(points=[(1.0, 2.0, 3.0)]), r"\(x, y\) pair"),
        (lambda t: t.add_object(points=[DISC], obj_id=1), "object id 1 is already tracked"),
        (lambda t: t.refine(7, points=[DISC]), r"unknown object id 7 \(tracked ids: 1\)"),
        (lambda t: t.remove(7), "unknown object id 7"),
    ],
)
def test_errors_on_a_stepped_tracker(model: Any, call: Callable, message: str) -> None:
    tracker = StreamTracker(model)
    tracker.step(CLIP[0])
    tracker.add_object(points=[DISC])
    with pytest.raises(ValueError, match=message):
        call(tracker)
    assert list(tracker.objects) == [1]  # a bad call leaves the tracker as it was


def test_image_segmenter_errors(model: Any) -> None:
    seg = ImageSegmenter(model)
    with pytest.raises(ValueError, match="call set_image"):
        seg.segment(points=[DISC])
    with pytest.raises(ValueError, match="dtype uint8"):
        seg.set_image(np.zeros((4, 4, 3), np.int64))
    seg.set_image(CLIP[0])
    with pytest.raises(ValueError, match="outside the 64x48 frame"):
        seg.segment(points=[(100.0, 1.0)])


def test_memory_encoder_projects_a_shared_frame_once(model: Any) -> None:
    from workers.vision.batching import SharedFrameMemoryEncoder

    frame = torch.randn(1, model.hidden_dim, IMAGE_SIZE // 16, IMAGE_SIZE // 16)
    masks = torch.randn(3, 1, IMAGE_SIZE, IMAGE_SIZE)
    calls = []
    hook = model.memory_encoder.pix_feat_proj.register_forward_hook(
        lambda _m, args, _o: calls.append(args[0].shape[0])
    )
    try:
        with torch.inference_mode():
            theirs = model.memory_encoder(frame.expand(3, -1, -1, -1).contiguous(), masks)
            calls.clear()
            ours = SharedFrameMemoryEncoder(model.memory_encoder)(
                frame.expand(3, -1, -1, -1), masks
            )
    finally:
        hook.remove()
    assert calls == [1]  # one frame projected, not three copies of it
    for a, b in [
        (theirs["vision_features"], ours["vision_features"]),
        (theirs["vision_pos_enc"][0], ours["vision_pos_enc"][0]),
    ]:
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)
