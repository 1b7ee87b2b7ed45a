"""Image mode through the API: upload, decoder-only clicks equal to ImageSegmenter's masks, find/describe/chat on a scripted VLM, bad images, eviction."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from streamer.app import create_app
from streamer.http.access import OWNER_COOKIE
from streamer.image import store as image_store
from streamer.services import build_reasoner
from streamer.settings import Settings
from streamer.storage.db import DB_NAME
from tests.conftest import CheckedFindScript, request_text, sent_aside
from tests.fakes.openai_server import ScriptedVLMServer
from tests.test_retention import expect_retired
from workers.masks import box_iou, rle_decode
from workers.reasoning.grounding import from_frame_box
from workers.reasoning.images import fitted_size

W, H = 160, 120
SQUARE_BOX = (50.0, 40.0, 90.0, 80.0)  # x0, y0, x1, y1 of the red square


def picture() -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], axis=-1).astype(np.uint8)
    x0, y0, x1, y1 = (int(v) for v in SQUARE_BOX)
    img[y0:y1, x0:x1] = (230, 20, 20)
    return img


def encoded(fmt: str, img: np.ndarray | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(picture() if img is None else img).save(buf, format=fmt)
    return buf.getvalue()


def make_client(model: Any, tmp_path: Path, reasoner: Any = None, **overrides: Any) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", **overrides)
    return TestClient(
        create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
    )


@contextlib.asynccontextmanager
async def served(app: Any) -> AsyncIterator[tuple[Any, Any]]:
    """The app under uvicorn (requests at once, streams cut short) and a client of it: (server,
    client)."""
    import httpx

    from tests.conftest import ServerThread

    with ServerThread(app) as server:
        headers = {"origin": server.base_url}
        async with httpx.AsyncClient(base_url=server.base_url, headers=headers, timeout=60) as c:
            yield server, c


def upload(client: TestClient, data: bytes, name: str = "pic.png") -> Any:
    return client.post("/api/images", files={"file": (name, data, "application/octet-stream")})


def clicks_sent_to_sam2(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """Where SAM2 is told each click is (on the working copy), as the clicks come."""
    from workers.vision import ImageSegmenter

    seen: list[tuple[float, float]] = []
    segment = ImageSegmenter.segment

    def spy(self: Any, points: Any = None, labels: Any = None, box: Any = None) -> Any:
        seen.extend(tuple(p) for p in points or [])
        return segment(self, points=points, labels=labels, box=box)

    monkeypatch.setattr(ImageSegmenter, "segment", spy)
    return seen


def test_click_is_decoder_only_and_matches_segmenter(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.vision import ImageSegmenter

    encodes = []
    original = ImageSegmenter.set_image
    monkeypatch.setattr(
        ImageSegmenter, "set_image", lambda self, im: (encodes.append(1), original(self, im))[1]
    )
    with make_client(model, tmp_path) as client:
        r = upload(client, encoded("PNG"))
        assert r.status_code == 201, r.text
        img = r.json()
        assert (img["width"], img["height"]) == (W, H) and img["encode_ms"] > 0
        shown = client.get(img["image_url"])
        assert shown.status_code == 200 and Image.open(io.BytesIO(shown.content)).size == (W, H)

        r = client.post(f"/api/images/{img['id']}/clicks", json={"x": 70, "y": 60})
        assert r.status_code == 200, r.text
        obj = r.json()["object"]
        assert obj["id"] == 1 and r.json()["decode_ms"] > 0
        r = client.post(
            f"/api/images/{img['id']}/clicks",
            json={"x": 10, "y": 10, "negative": True, "object_id": 1},
        )
        refined = r.json()["object"]
        r = client.post(f"/api/images/{img['id']}/clicks", json={"x": 120, "y": 100})
        assert r.json()["object"]["id"] == 2
    assert len(encodes) == 1  # one encode at upload; every click was decoder-only

    seg = ImageSegmenter(model)
    original(seg, picture())
    m1, _ = seg.segment(points=[(70, 60)], labels=[1])
    m2, _ = seg.segment(points=[(70, 60), (10, 10)], labels=[1, 0])
    assert np.array_equal(rle_decode(obj["rle"]), m1)
    assert np.array_equal(rle_decode(refined["rle"]), m2)


def _request_text(request: dict[str, Any]) -> str:
    return " ".join(
        part.get("text", "")
        for m in request["messages"]
        if isinstance(m["content"], list)
        for part in m["content"]
        if isinstance(part, dict)
    ) + " ".join(m["content"] for m in request["messages"] if isinstance(m["content"], str))


def _as_qwen(box: Any) -> str:
    """A frame-pixel box as Qwen2.5-VL writes it (absolute pixels of the image it was sent)."""
    sent = from_frame_box(
        tuple(box), convention="absolute", image_size=fitted_size(W, H, 768), frame_size=(W, H)
    )
    return json.dumps([{"bbox_2d": list(sent), "label": "red square"}])


class Script:
    """Find: the square's box. Describe: one sentence. Grounding that sentence back (the check):
    `described_at`, which the test sets to the mask's own box or to a box far away from it."""

    def __init__(self) -> None:
        self.described_at: Any = SQUARE_BOX

    def __call__(self, request: dict[str, Any]) -> str:
        text = _request_text(request)
        if "Locate" in text and "gradient" in text:
            return _as_qwen(self.described_at)
        if "Locate" in text:
            return _as_qwen(SQUARE_BOX)
        if "Describe" in text:
            return "A red square on a gradient."
        return "It is red."


def ndjson(r: Any) -> list[dict[str, Any]]:
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


@pytest.mark.timeout(120)
def test_find_describe_chat_with_scripted_vlm(model: Any, tmp_path: Path) -> None:
    script = Script()
    with ScriptedVLMServer(answer=script) as srv:
        reasoner, why = build_reasoner(Settings(vlm_url=srv.url))
        assert why is None
        with make_client(model, tmp_path, reasoner=reasoner) as client:
            img = upload(client, encoded("WEBP")).json()
            assert img["descriptions"] is True
            r = client.post(f"/api/images/{img['id']}/find", json={"phrase": "the red square"})
            assert r.status_code == 200, r.text
            assert r.json()["type"] == "find_result"
            (found,) = r.json()["objects"]
            assert found["label"] == "red square"
            assert box_iou(found["box"], SQUARE_BOX) > 0.9
            result = found["result"]  # a mask per box, not just the box
            assert rle_decode(result["rle"]).shape == (H, W) and result["box"] is not None
            oid = found["object_id"]
            describe = f"/api/images/{img['id']}/objects/{oid}/describe"

            # The description grounds back onto the mask's own box: verified at the first attempt.
            script.described_at = result["box"]
            events = ndjson(client.post(describe))
            assert [e["type"] for e in events[:2]] == ["description_start", "description_token"]
            verdict = next(e for e in events if e["type"] == "verdict")
            assert verdict["description"] == "A red square on a gradient."
            assert verdict["verdict"] == "verified" and verdict["attempts"] == 1
            assert verdict["iou"] > 0.9
            assert events[-1]["type"] == "objects"  # the object is named after its description
            assert events[-1]["objects"][0]["label"] == "A red square on a gradient"

            # A click on a new place asks the page to describe the new object at once (as Live
            # does); a refining click does not.
            clicks = f"/api/images/{img['id']}/clicks"
            new = client.post(clicks, json={"x": 20, "y": 20}).json()
            assert new["describe"] is True
            refine = {"x": 22, "y": 22, "object_id": new["object"]["id"]}
            assert client.post(clicks, json=refine).json()["describe"] is False

            # It grounds far from the mask: regenerated up to the limit, then unverified.
            script.described_at = (W - 12.0, H - 12.0, W - 2.0, H - 2.0)
            expected = box_iou(script.described_at, result["box"])
            assert expected < 0.5  # (random weights: the mask may be large, never this small)
            verdict = next(e for e in ndjson(client.post(describe)) if e["type"] == "verdict")
            assert verdict["verdict"] == "unverified" and verdict["attempts"] == 3
            assert verdict["iou"] == pytest.approx(expected, abs=0.02)

            chat = f"/api/images/{img['id']}/objects/{oid}/chat"
            events = ndjson(client.post(chat, json={"question": "What color?"}))
            assert "".join(e.get("text", "") for e in events).strip() == "It is red."
            assert events[-1] == {
                "type": "chat_done",
                "object_id": oid,
                "answer": "It is red.",
                "frame_index": 0,
            }
            # The history is kept on the server: the next question carries the first turn.
            seen = len(srv.requests)
            client.post(chat, json={"question": "And its shape?"})
            sent = _request_text(srv.requests[seen])
            assert "What color?" in sent and "It is red." in sent


def test_describe_without_vlm_says_what_to_do(model: Any, tmp_path: Path) -> None:
    with make_client(model, tmp_path) as client:
        img = upload(client, encoded("JPEG"), "p.jpg").json()
        r = client.post(f"/api/images/{img['id']}/clicks", json={"x": 70, "y": 60})
        assert r.json()["describe"] is False  # no VLM: the page does not start a description
        r = client.post(f"/api/images/{img['id']}/objects/1/describe")
        assert r.status_code == 503 and "--vlm-url" in r.json()["detail"]
        r = client.post(f"/api/images/{img['id']}/clicks", json={"x": 999, "y": 60})
        assert r.status_code == 422 and "outside the image" in r.json()["detail"]


def test_bad_clicks_are_refused_and_lose_nothing(model: Any, tmp_path: Path) -> None:
    with make_client(model, tmp_path, max_objects=1) as client:
        img = upload(client, encoded("PNG")).json()
        clicks = f"/api/images/{img['id']}/clicks"
        # a negative click needs an object to remove a region from
        r = client.post(clicks, json={"x": 70, "y": 60, "negative": True})
        assert r.status_code == 422 and "select the object first" in r.json()["detail"]
        assert client.post(clicks, json={"x": 70, "y": 60}).status_code == 200
        # past the per-image cap a new object is refused; the first one stays
        r = client.post(clicks, json={"x": 20, "y": 20})
        assert r.status_code == 409 and "at most 1 objects per image" in r.json()["detail"]
        objects = client.get(f"/api/images/{img['id']}").json()["objects"]
        assert [o["id"] for o in objects] == [1]


def test_reset_forgets_every_object_and_keeps_the_image(model: Any, tmp_path: Path) -> None:
    with make_client(model, tmp_path) as client:
        img = upload(client, encoded("PNG")).json()
        clicks = f"/api/images/{img['id']}/clicks"
        for x in (70, 20):
            assert client.post(clicks, json={"x": x, "y": 60}).status_code == 200
        r = client.delete(f"/api/images/{img['id']}/objects")
        assert (r.json()["type"], r.json()["objects"], r.json()["added"]) == ("objects", [], None)
        assert client.get(f"/api/images/{img['id']}").json()["objects"] == []
        # the image (and its embedding) stays; ids are never reused
        assert client.post(clicks, json={"x": 70, "y": 60}).json()["object"]["id"] == 3


def reset_meeting_a_remove(
    client: TestClient, url: str, oid: int, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, Any]:
    """DELETE `url`/objects (a reset) while it waits on its first object, DELETE `url`/objects/`oid`
    (a remove, or the other half of a double-clicked Reset): (the reset's answer, the remove's)."""
    from streamer.objects import table

    held, release = threading.Event(), threading.Event()
    real_cancel = table.cancel_tasks

    async def cancel_tasks(tasks: list[Any]) -> None:
        # Every removal stops the object's tasks after it leaves the table; the first one waits.
        if not held.is_set():
            held.set()
            assert await asyncio.to_thread(release.wait, 60)
        await real_cancel(tasks)

    monkeypatch.setattr(table, "cancel_tasks", cancel_tasks)
    with sent_aside(lambda: client.delete(f"{url}/objects"), release) as reset:
        assert held.wait(60)
        removed = client.delete(f"{url}/objects/{oid}")
    return reset.answer, removed


def test_a_reset_skips_an_object_removed_meanwhile(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reset goes on past an object a remove took while it worked (it stopped with 404 "no object
    2", leaving object 3)."""
    with make_client(model, tmp_path) as client:
        img = upload(client, encoded("PNG")).json()
        for x in (70, 20, 120):
            assert client.post(f"/api/images/{img['id']}/clicks", json={"x": x, "y": 60}).is_success
        url = f"/api/images/{img['id']}"
        reset, removed = reset_meeting_a_remove(client, url, 2, monkeypatch)
        assert removed.status_code == 200, removed.text
        assert reset.status_code == 200, reset.text
        assert reset.json()["objects"] == [] and client.get(url).json()["objects"] == []


def _truncated_png() -> bytes:
    data = encoded("PNG")
    return data[: len(data) // 2]


# (file name, bytes, settings overrides, status, words in the message)
BAD_IMAGES: list[tuple[str, bytes, dict[str, Any], int, str]] = [
    # random bytes named .png
    ("noise.png", bytes(range(256)) * 8, {}, 422, "not an image we can read"),
    # a PNG cut in half
    ("half.png", _truncated_png(), {}, 422, "not an image we can read"),
    # a drawing FFmpeg reads (svg_pipe): no video for all that
    (
        "drawing.svg",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>',
        {},
        422,
        "not an image we can read",
    ),
    # a GIF: a real image, but not a format we take
    ("anim.gif", encoded("GIF"), {}, 415, "PNG, JPEG or WebP"),
    # more pixels than allowed (checked before decoding)
    ("big.png", encoded("PNG"), {"max_image_pixels": 1024}, 413, "too large"),
    # more bytes than allowed (refused while streaming)
    ("heavy.png", b"\x89PNG" + bytes(1_500_000), {"max_image_mb": 1}, 413, "too large"),
    # an empty file
    ("empty.jpg", b"", {}, 400, "empty"),
]


@pytest.mark.parametrize(
    "name,data,overrides,status,words", BAD_IMAGES, ids=[b[0] for b in BAD_IMAGES]
)
def test_bad_images_are_refused(
    model: Any,
    tmp_path: Path,
    name: str,
    data: bytes,
    overrides: dict[str, Any],
    status: int,
    words: str,
) -> None:
    with make_client(model, tmp_path, **overrides) as client:
        r = upload(client, data, name)
        assert r.status_code == status, r.text
        assert words.lower() in r.json()["detail"].lower()
    data_dir = tmp_path / "data"
    # nothing but the database (which has no row for it) is left
    files = [p for p in data_dir.rglob("*") if p.is_file() and not p.name.startswith(DB_NAME)]
    assert not files


def test_library_lists_every_image_newest_first_past_the_embedding_bound(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only memory is bounded: a third image frees the first's pixels and embedding; it stays usable.
    monkeypatch.setattr(image_store, "MAX_IMAGES_KEPT", 2)
    with make_client(model, tmp_path) as client:
        ids = []
        for i in range(3):
            ids.append(upload(client, encoded("PNG"), name=f"pic{i}.png").json()["id"])
            time.sleep(0.01)  # distinct upload times: the library is newest first
        listed = client.get("/api/images").json()
        assert [i["id"] for i in listed["images"]] == ids[::-1] and listed["removed"] == []
        first = listed["images"][-1]
        assert (first["filename"], first["width"], first["height"]) == ("pic0.png", W, H)
        assert first["bytes"] > 0 and (first["objects"], first["state"]) == (0, "new")
        freed = client.app.state.images.items[ids[0]]
        assert freed.image is None and freed.segmenter is None  # memory is what is bounded
        r = client.post(f"/api/images/{ids[0]}/clicks", json={"x": 70, "y": 60})
        assert r.status_code == 200, r.text  # its pixels are read and its embedding computed again
        assert client.get("/api/images").json()["images"][-1]["state"] == "segmented"
        thumb = client.get(f"/api/images/{ids[0]}/thumbnail.jpg")
        assert thumb.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumb.content)).size == (W, H)  # smaller than 160: as is
        # delete removes the file and the row: gone from the list, the disk, and a restart
        assert client.delete(f"/api/images/{ids[1]}").status_code == 200
        assert [i["id"] for i in client.get("/api/images").json()["images"]] == [ids[2], ids[0]]
        assert len(list((tmp_path / "data" / "images").glob("*.jpg"))) == 2
    with make_client(model, tmp_path) as client:
        listed = client.get("/api/images").json()["images"]
        assert [(i["id"], i["objects"]) for i in listed] == [(ids[2], 0), (ids[0], 1)]


def test_over_the_budget_the_least_recently_used_image_goes_and_the_library_says_why(
    model: Any, tmp_path: Path
) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (700, 900, 3), dtype=np.uint8)
    with make_client(model, tmp_path, disk_budget_mb=1) as client:
        a = upload(client, encoded("PNG", noise), name="a.png").json()["id"]
        b = upload(client, encoded("PNG", noise), name="b.png").json()["id"]
        expect_retired(client, "image", kept=[b], gone=(a, "a.png"))
        assert not (tmp_path / "data" / "images" / f"{a}.jpg").exists()
        # another browser is told nothing of this one's images
        other = client.get("/api/images", headers={"cookie": f"{OWNER_COOKIE}={'f' * 32}"})
        assert other.json() == {"images": [], "removed": []}


OTHER_BOX = (4.0, 4.0, 30.0, 30.0)  # a corner of the gradient, not a red square


@pytest.mark.timeout(180)
def test_checked_find_drops_the_candidate_the_vlm_rejects(model: Any, tmp_path: Path) -> None:
    script = CheckedFindScript(
        [SQUARE_BOX, OTHER_BOX], ["Yes.", "No, that is part of the background."], (W, H)
    )
    with ScriptedVLMServer(answer=script) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner=reasoner) as client:
            img = upload(client, encoded("PNG")).json()
            find = f"/api/images/{img['id']}/find"
            r = client.post(find, json={"phrase": "the red square"})
            assert r.status_code == 200, r.text
            answer = r.json()
            # Both candidates were shown to the VLM with the phrase, as Spotlights.
            assert len(script.checks) == 2 and all(n >= 1 for n in script.check_images())
            assert all('"the red square"' in request_text(b) for b in script.checks)
            (found,) = answer["objects"]
            assert box_iou(found["box"], SQUARE_BOX) > 0.9
            assert found["check"] == "match" and found["check_answer"] == "Yes."
            (rejected,) = answer["rejected"]
            assert box_iou(rejected["box"], OTHER_BOX) > 0.9 and rejected["check"] == "no_match"
            assert "did not accept" in answer["message"]
            objects = client.get(f"/api/images/{img['id']}").json()["objects"]
            assert [(o["id"], o["find_check"]) for o in objects] == [(found["object_id"], "match")]

            # Asking for all candidates keeps the rejected one, flagged; a reply that is neither
            # yes nor no is kept too, marked unclear.
            script.checks.clear()
            script.verdicts = ["no", "I cannot tell from this picture."]
            r = client.post(find, json={"phrase": "the red square", "all_candidates": True})
            kept = r.json()["objects"]
            assert [o["check"] for o in kept] == ["no_match", "unclear"]
            assert r.json()["rejected"] == []
            objects = client.get(f"/api/images/{img['id']}").json()["objects"]
            assert [o["find_check"] for o in objects] == ["match", "no_match", "unclear"]


@pytest.mark.timeout(180)
def test_find_tracks_an_object_the_vlm_named_twice_once(model: Any, tmp_path: Path) -> None:
    # Qwen often writes one box again (or loops on it): one object, checked once, not two.
    again = (SQUARE_BOX[0] + 1, SQUARE_BOX[1], SQUARE_BOX[2], SQUARE_BOX[3] + 1)
    script = CheckedFindScript([SQUARE_BOX, again, SQUARE_BOX], [], (W, H))
    with ScriptedVLMServer(answer=script) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner=reasoner) as client:
            img = upload(client, encoded("PNG")).json()
            r = client.post(f"/api/images/{img['id']}/find", json={"phrase": "the red square"})
            assert r.status_code == 200, r.text
            (found,) = r.json()["objects"]
            assert box_iou(found["box"], SQUARE_BOX) > 0.9 and len(script.checks) == 1
            assert len(client.get(f"/api/images/{img['id']}").json()["objects"]) == 1


class RefineScript:
    """Auto-refine answers in order (the last one repeats); the click requests are kept."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: dict[str, Any]) -> str:
        if "next click" not in _request_text(request):
            return "It is red."
        self.requests.append(request)
        return self.answers[min(len(self.requests), len(self.answers)) - 1]


def _model_click(kind: str, x: float, y: float) -> str:
    """A frame-pixel click as Qwen2.5-VL writes it (pixels of the 168x112 image it was sent)."""
    sw, sh = fitted_size(W, H, 768)
    return json.dumps({"action": kind, "point_2d": [round(x * sw / W), round(y * sh / H)]})


@pytest.mark.timeout(180)
def test_auto_refine_applies_two_clicks_in_order_then_done(model: Any, tmp_path: Path) -> None:
    from workers.vision import ImageSegmenter

    script = RefineScript(
        [
            "```json\n" + _model_click("negative", 10, 10) + "\n```",
            "Add the missing corner: " + _model_click("positive", 80, 70),
            '{"action": "done"}',
        ]
    )
    with ScriptedVLMServer(answer=script) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner=reasoner) as client:
            img = upload(client, encoded("PNG")).json()
            client.post(f"/api/images/{img['id']}/clicks", json={"x": 70, "y": 60})
            r = client.post(f"/api/images/{img['id']}/objects/1/auto_refine", json={})
            assert r.status_code == 200, r.text
            events = ndjson(r)
            final = client.get(f"/api/images/{img['id']}").json()["objects"][0]
    assert [e["type"] for e in events] == ["refine_click", "refine_click", "refine_done"]
    first, second, done = events
    assert (first["step"], first["positive"]) == (1, False)
    assert (second["step"], second["positive"]) == (2, True)
    assert (first["x"], first["y"]) == pytest.approx((10, 10), abs=1)
    assert (second["x"], second["y"]) == pytest.approx((80, 70), abs=1)
    assert done["reason"] == "done" and done["steps"] == 2
    # The VLM saw the Spotlight and the frame each time, and its earlier clicks from step 2 on.
    assert len(script.requests) == 3
    assert "Clicks so far" not in _request_text(script.requests[0])
    assert "negative at" in _request_text(script.requests[1])

    # Each click was an ordinary refinement, in order: the mask is SAM2's for all three clicks.
    seg = ImageSegmenter(model)
    seg.set_image(picture())
    points = [(70, 60), (first["x"], first["y"]), (second["x"], second["y"])]
    after_one, _ = seg.segment(points=points[:2], labels=[1, 0])
    after_two, _ = seg.segment(points=points, labels=[1, 0, 1])
    assert np.array_equal(rle_decode(first["result"]["rle"]), after_one)
    assert np.array_equal(rle_decode(second["result"]["rle"]), after_two)
    assert np.array_equal(rle_decode(final["rle"]), after_two)


@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    "answers, max_steps, reason, steps",
    [
        (["The mask looks nice to me!"], 4, "unclear", 0),  # junk: nothing applied
        (['{"action": "positive", "point_2d": [999, 999]}'], 4, "unclear", 0),  # off the image
        ([_model_click("positive", 75, 65)], 3, "limit", 3),  # never says done: the bound holds
    ],
)
def test_auto_refine_junk_applies_nothing_and_the_bound_holds(
    model: Any, tmp_path: Path, answers: list[str], max_steps: int, reason: str, steps: int
) -> None:
    script = RefineScript(answers)
    with ScriptedVLMServer(answer=script) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner=reasoner) as client:
            img = upload(client, encoded("PNG")).json()
            before = client.post(f"/api/images/{img['id']}/clicks", json={"x": 70, "y": 60})
            r = client.post(
                f"/api/images/{img['id']}/objects/1/auto_refine", json={"max_steps": max_steps}
            )
            events = ndjson(r)
            after = client.get(f"/api/images/{img['id']}").json()["objects"][0]
            # The image and its object stay usable: a person's click still works.
            again = client.post(
                f"/api/images/{img['id']}/clicks", json={"x": 72, "y": 62, "object_id": 1}
            )
    done = events[-1]
    assert done["type"] == "refine_done" and done["reason"] == reason and done["steps"] == steps
    assert len([e for e in events if e["type"] == "refine_click"]) == steps
    assert len(script.requests) == min(steps + 1, max_steps)
    if steps == 0:
        assert "neither a click nor done" in done["message"]
        assert after["rle"] == before.json()["object"]["rle"]  # nothing applied
    assert again.status_code == 200


def test_a_huge_small_png_is_worked_on_at_the_working_size_and_clicks_land_in_place(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 6300x6300 PNG of a few KB (a flat picture with a red square): its memory is the working
    copy's, not the file's claims, and clicks and masks stay in the image's own pixels."""
    import threading

    import psutil
    from PIL import ImageDraw

    side, square = 6300, (4000, 1000, 5000, 2000)
    big = Image.new("RGB", (side, side), (40, 40, 40))
    ImageDraw.Draw(big).rectangle(
        (square[0], square[1], square[2] - 1, square[3] - 1), (230, 20, 20)
    )
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    del big  # 119 MB: gone before the baseline
    data = buf.getvalue()
    assert len(data) < 200_000

    seen = clicks_sent_to_sam2(monkeypatch)
    proc, peak, done = psutil.Process(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            done.wait(0.005)

    with make_client(model, tmp_path, image_working_pixels=1_000_000) as client:
        assert upload(client, encoded("PNG")).status_code == 201  # SAM2's first-call buffers
        base = proc.memory_info().rss
        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            r = upload(client, data, "huge.png")
        finally:
            done.set()
            sampler.join()
        assert r.status_code == 201, r.text
        img = r.json()
        # Decoding this file whole and handing it to SAM2 cost ~640 MB (its float copy alone is
        # 476 MB); the working copy (1 Mpx) needs a part of that, the file's one decode included.
        assert peak[0] - base < 400 * 2**20, f"upload grew RSS by {(peak[0] - base) >> 20} MB"
        assert (img["width"], img["height"]) == (side, side)
        kept = tmp_path / "data" / "images" / f"{img['id']}.original"
        assert kept.read_bytes() == data  # the full resolution stays on disk

        shown = np.asarray(Image.open(io.BytesIO(client.get(img["image_url"]).content)))
        sh, sw = shown.shape[:2]
        assert sw * sh <= 1_000_000 and abs(sw - sh) <= 1
        # (click in the image's pixels, whether it is on the red square)
        for (x, y), red in (((4500, 1500), True), ((1000, 5000), False)):
            seen.clear()
            r = client.post(f"/api/images/{img['id']}/clicks", json={"x": x, "y": y})
            assert r.status_code == 200, r.text
            obj = r.json()["object"]
            assert obj["rle"]["size"] == [side, side]  # the mask is in the image's pixels
            (wx, wy), *_ = seen  # where SAM2 was told the click is, on the working copy
            pixel = shown[int(wy), int(wx)]
            assert (pixel[0] > 150 and pixel[1] < 80) == red, (x, y, wx, wy, pixel)
            assert obj["box"] is None or (0 <= obj["box"][0] < obj["box"][2] <= side)


@pytest.mark.parametrize("scale", [1, 4], ids=["whole", "shrunk"])
def test_a_phone_photo_taken_upright_is_shown_and_clicked_upright(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scale: int
) -> None:
    """A JPEG stored landscape with EXIF orientation 6 (a phone held upright): the page gets it
    upright, its size is the upright one, and a click where the square shows lands on it, whole
    or (4x larger) shrunk to the working size."""
    stored = picture().repeat(scale, axis=0).repeat(scale, axis=1)
    exif = Image.Exif()
    exif[0x0112] = 6  # turn 90 degrees clockwise to show
    buf = io.BytesIO()
    Image.fromarray(stored).save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    seen = clicks_sent_to_sam2(monkeypatch)
    with make_client(model, tmp_path, image_working_pixels=65_536) as client:
        r = upload(client, buf.getvalue(), "portrait.jpg")
        assert r.status_code == 201, r.text
        img = r.json()
        assert (img["width"], img["height"]) == (H * scale, W * scale)
        shown = np.asarray(Image.open(io.BytesIO(client.get(img["image_url"]).content)))
        assert shown.shape[0] > shown.shape[1]  # taller than wide, as the person saw it
        assert (shown.shape[0] * shown.shape[1] < W * H * scale**2) == (scale > 1)
        # The square, stored at x 50-90 and y 40-80, shows at x 40-80 and y 50-90 upright.
        for (x, y), red in (((60, 70), True), ((60, 10), False), ((100, 140), False)):
            seen.clear()
            r = client.post(
                f"/api/images/{img['id']}/clicks", json={"x": x * scale, "y": y * scale}
            )
            assert r.status_code == 200, r.text
            assert r.json()["object"]["rle"]["size"] == [W * scale, H * scale]  # upright rows
            (wx, wy), *_ = seen  # where SAM2 was told the click is, on the working copy
            r_, g_, b_ = (int(v) for v in shown[int(wy), int(wx)])
            assert (r_ > 150 and g_ < 80 and b_ < 60) == red, (x, y, wx, wy, (r_, g_, b_))
            assert client.delete(f"/api/images/{img['id']}/objects").status_code == 200


def test_an_image_past_the_working_size_maps_clicks_in_place_after_it_is_freed_and_restored(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A working copy smaller than the image: once its pixels are freed (past the memory bound)
    and after a restart (read back from its display copy), a click still reaches SAM2 where it
    is on the working copy, and the mask is answered in the image's own pixels."""

    monkeypatch.setattr(image_store, "MAX_IMAGES_KEPT", 1)
    big = np.full((600, 1200, 3), 40, np.uint8)
    big[100:300, 800:1100] = (230, 20, 20)
    seen = clicks_sent_to_sam2(monkeypatch)

    def clicks_land(client: TestClient, image_id: str) -> None:
        shown = np.asarray(
            Image.open(io.BytesIO(client.get(f"/api/images/{image_id}/image").content))
        )
        assert shown.shape[1] < 1200  # the working copy
        for (x, y), red in (((950, 200), True), ((100, 500), False)):
            seen.clear()
            r = client.post(f"/api/images/{image_id}/clicks", json={"x": x, "y": y})
            assert r.status_code == 200, r.text
            assert r.json()["object"]["rle"]["size"] == [600, 1200]
            (wx, wy), *_ = seen
            pixel = shown[int(wy), int(wx)]
            assert (pixel[0] > 150 and pixel[1] < 80) == red, (x, y, wx, wy, pixel)

    with make_client(model, tmp_path, image_working_pixels=65_536) as client:
        first = upload(client, encoded("PNG", big), "big.png").json()
        assert (first["width"], first["height"]) == (1200, 600)
        upload(client, encoded("PNG"), "small.png")
        freed = client.app.state.images.items[first["id"]]
        assert freed.image is None  # past the bound: its pixels are freed
        clicks_land(client, first["id"])
    with make_client(model, tmp_path, image_working_pixels=65_536) as client:
        got = client.get(f"/api/images/{first['id']}").json()
        assert (got["width"], got["height"]) == (1200, 600)
        assert [o["rle"]["size"] for o in got["objects"]] == [[600, 1200], [600, 1200]]
        clicks_land(client, first["id"])


def test_the_far_corner_maps_to_the_working_copys_far_corner_and_back(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1001 x 333 is worked on at 443 x 147 (65,536 pixels): each axis shrinks by its own ratio
    (0.4426 and 0.4414). A click on the image's last pixel reaches SAM2 on the working copy's
    last pixel (x's ratio for both axes put it a row below the picture: the click was refused),
    and the working copy's
    far corner (a VLM's box of the whole picture) is the image's far corner."""
    img = np.full((333, 1001, 3), 40, np.uint8)
    img[-20:, -40:] = (230, 20, 20)  # a red patch in the far corner
    seen = clicks_sent_to_sam2(monkeypatch)
    with make_client(model, tmp_path, image_working_pixels=65_536) as client:
        info = upload(client, encoded("PNG", img), "wide.png").json()
        entry = client.app.state.images.items[info["id"]]
        shown = np.asarray(Image.open(io.BytesIO(client.get(info["image_url"]).content)))
        assert entry.working == (443, 147) and shown.shape[:2] == (147, 443)
        r = client.post(f"/api/images/{info['id']}/clicks", json={"x": 1000.5, "y": 332.5})
        assert r.status_code == 200, r.text
        ((wx, wy),) = seen
        assert (wx, wy) == pytest.approx((1000.5 * 443 / 1001, 332.5 * 147 / 333))
        assert (int(wx), int(wy)) == (442, 146)  # the last column and row
        assert shown[int(wy), int(wx)][0] > 150  # on the red patch, as the person clicked
        assert entry.to_working((0, 0, 1001, 333)) == (0, 0, 443, 147)
        assert entry.to_image((0, 0, 443, 147)) == (0, 0, 1001, 333)
        assert entry.to_image(entry.to_working((1000.5, 332.5))) == (1000.5, 332.5)


def test_a_box_to_the_images_far_edge_stays_on_the_working_copy() -> None:
    """1418 x 1063 worked on at 1154 x 865: a find-all region to the copy's bottom-right edge,
    kept in the image's pixels (rounded) and brought back, came out at y 865.0000000000001, and
    SAM2 refused it as outside the frame (about 3% of image sizes do this)."""
    from streamer.image.store import ImageEntry
    from streamer.objects.table import ObjectTable
    from workers.vision.inputs import Prompt

    entry = ImageEntry(
        "i", "i.png", None, None, Path("d.jpg"), 0.0, ObjectTable(8, "image"), 1418, 1063
    )
    entry.working = (1154, 865)
    box = entry.to_working(entry.to_image((577.0, 432.0, 1154.0, 865.0)))
    assert box[2:] == (1154.0, 865.0)
    Prompt.build(None, None, box, entry.working)  # SAM2 takes it


@pytest.mark.timeout(180)
def test_a_verdicts_box_is_in_the_images_own_pixels_past_the_working_size(
    model: Any, tmp_path: Path
) -> None:
    """The VLM sees the shrunk working copy; the box the description was grounded to comes back
    in the image's own pixels, as every box of the API does."""
    big = picture().repeat(4, axis=0).repeat(4, axis=1)  # 640 x 480, worked on at ~295 x 221
    sent: dict[str, tuple[int, int]] = {}

    def answer(request: dict[str, Any]) -> str:
        text = _request_text(request)
        if "Locate" in text:  # the check: the whole picture the VLM was sent
            return json.dumps([{"bbox_2d": [0, 0, *sent["size"]], "label": "it"}])
        return "A red square on a gradient."

    with ScriptedVLMServer(answer=answer) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner, image_working_pixels=65_536) as client:
            img = upload(client, encoded("PNG", big), "big.png").json()
            entry = client.app.state.images.items[img["id"]]
            assert entry.working[0] < 640
            sent["size"] = fitted_size(*entry.working, 768)
            r = client.post(f"/api/images/{img['id']}/clicks", json={"x": 280, "y": 240})
            oid = r.json()["object"]["id"]
            events = ndjson(client.post(f"/api/images/{img['id']}/objects/{oid}/describe"))
            verdict = next(e for e in events if e["type"] == "verdict")
            assert verdict["box"] == pytest.approx([0, 0, 640, 480], abs=3)


async def uploaded(c: Any) -> tuple[str, str]:
    """The test picture uploaded over a running server's client `c`: (its id, its clicks URL)."""
    files = {"file": ("a.png", encoded("PNG"), "image/png")}
    iid = (await c.post("/api/images", files=files)).json()["id"]
    return iid, f"/api/images/{iid}/clicks"


@pytest.mark.timeout(180)
async def test_clicks_at_once_on_one_image_each_count_and_the_cap_holds(
    model: Any, tmp_path: Path
) -> None:
    """Two refining clicks on one object sent together both land on its mask; a burst of new
    clicks stops at the object cap."""
    import asyncio

    settings = Settings(data_dir=tmp_path / "data", max_objects=4)
    app = create_app(settings, vision_model=model, reasoner=None, load_vision=False)
    async with served(app) as (server, c):
        iid, clicks = await uploaded(c)
        assert (await c.post(clicks, json={"x": 70, "y": 60})).status_code == 200
        both = await asyncio.gather(
            c.post(clicks, json={"x": 55, "y": 45, "object_id": 1}),
            c.post(clicks, json={"x": 10, "y": 10, "negative": True, "object_id": 1}),
        )
        assert [r.status_code for r in both] == [200, 200]
        kept = server.call(lambda: app.state.images.items[iid].segments[1])
        assert sorted(zip(kept.points, kept.labels, strict=True)) == [
            ((10, 10), 0),
            ((55, 45), 1),
            ((70, 60), 1),
        ]
        burst = await asyncio.gather(
            *(c.post(clicks, json={"x": 5 + 9 * i, "y": 100}) for i in range(8))
        )
        assert sorted(r.status_code for r in burst) == [200] * 3 + [409] * 5
        listed = (await c.get(f"/api/images/{iid}")).json()["objects"]
        assert len(listed) == 4


@pytest.mark.timeout(180)
async def test_removing_objects_stops_their_descriptions_and_frees_the_vlm(
    model: Any, tmp_path: Path
) -> None:
    """Two objects describing (the image's whole VLM share) are removed: their streams stop, so
    the next object's description is not refused as busy."""
    import asyncio

    from tests.conftest import spotlight_answerer

    with ScriptedVLMServer(answer=spotlight_answerer(), token_delay_s=0.3) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        settings = Settings(data_dir=tmp_path / "data", vlm_max_in_flight_per_session=2)
        app = create_app(settings, vision_model=model, reasoner=reasoner, load_vision=False)
        async with served(app) as (_, c):
            iid, clicks = await uploaded(c)
            for x in (70, 20):
                assert (await c.post(clicks, json={"x": x, "y": 60})).status_code == 200

            async def describe(oid: int, streaming: asyncio.Event | None = None) -> list[str]:
                """The stream's event types; `streaming` is set at its first token."""
                url = f"/api/images/{iid}/objects/{oid}/describe"
                types = []
                async with c.stream("POST", url) as r:
                    async for line in r.aiter_lines():
                        if line:
                            types.append(json.loads(line)["type"])
                            if streaming and types[-1] == "description_token":
                                streaming.set()
                return types

            streaming = {oid: asyncio.Event() for oid in (1, 2)}
            streams = [asyncio.ensure_future(describe(o, s)) for o, s in streaming.items()]
            # Both are streaming their tokens (each holds its VLM slot) before they are removed.
            await asyncio.wait_for(asyncio.gather(*(s.wait() for s in streaming.values())), 120)
            for oid in (1, 2):
                assert (await c.delete(f"/api/images/{iid}/objects/{oid}")).status_code == 200
            ended = await asyncio.wait_for(asyncio.gather(*streams), 30)
            assert all("verdict" not in types for types in ended)
            oid = (await c.post(clicks, json={"x": 140, "y": 10})).json()["object"]["id"]
            events = await describe(oid)
            assert events[0] == "description_start" and "verdict" in events, events


@pytest.mark.parametrize("kind", ["grey16", "transparent"])
def test_deep_and_transparent_pngs_look_as_they_do_elsewhere(tmp_path: Path, kind: str) -> None:
    """A 16-bit grey PNG keeps its grey (it came out white); a logo on a transparent background
    shows on white (it came out on the black under the transparency)."""
    from streamer.image.decode import decode_image

    path = tmp_path / f"{kind}.png"
    if kind == "grey16":
        Image.fromarray(np.full((40, 60), 30000, np.uint16)).save(path)
    else:
        rgba = np.zeros((40, 60, 4), np.uint8)  # transparent black
        rgba[10:30, 20:40] = (20, 20, 20, 255)  # an opaque dark square
        Image.fromarray(rgba, "RGBA").save(path)
    pixels = decode_image(path, max_pixels=10**7, working_pixels=10**6).image
    assert pixels.shape == (40, 60, 3)
    if kind == "grey16":
        assert np.all(np.abs(pixels.astype(int) - 30000 * 255 // 65535) <= 1)
    else:
        assert (pixels[0, 0] == 255).all() and (pixels[20, 30] == 20).all()


@pytest.mark.timeout(120)
def test_a_second_describe_while_the_first_reads_the_image_back_is_busy_without_reading(
    model: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image whose pixels were freed is read back from disk by its describe; a second describe
    of the same object meanwhile is refused at once (409 busy), without reading it again."""
    import threading

    from tests.conftest import spotlight_answerer

    reads, reading, gate = [], threading.Event(), threading.Event()
    real_read = image_store.read_display

    def read_display(path: Path) -> np.ndarray:
        reads.append(path)
        reading.set()
        assert gate.wait(60)
        return real_read(path)

    with ScriptedVLMServer(answer=spotlight_answerer()) as srv:
        reasoner, _ = build_reasoner(Settings(vlm_url=srv.url))
        with make_client(model, tmp_path, reasoner) as client:
            iid = upload(client, encoded("PNG")).json()["id"]
            oid = client.post(f"/api/images/{iid}/clicks", json={"x": 70, "y": 60}).json()[
                "object"
            ]["id"]
            client.app.state.images.get(iid).image = None  # type: ignore[attr-defined]
            monkeypatch.setattr(image_store, "read_display", read_display)
            describe = f"/api/images/{iid}/objects/{oid}/describe"
            with sent_aside(lambda: client.post(describe), gate) as first:
                assert reading.wait(60)
                second = client.post(describe)
                assert second.status_code == 409 and second.json()["code"] == "busy"
                assert len(reads) == 1  # the second did no work
            assert first.answer.status_code == 200, first.answer.text
            types = [e["type"] for e in ndjson(first.answer)]
            assert types[0] == "description_start" and "verdict" in types, types
            # Once the first has ended, a new describe goes ahead.
            assert ndjson(client.post(describe))[0]["type"] == "description_start"


def test_a_video_uploaded_as_an_image_is_pointed_to_clip_mode(model: Any, tmp_path: Path) -> None:
    from tests.test_clip_media import write_clip

    clip = write_clip(tmp_path / "walk.mp4", frames=4, width=96, height=64)
    with make_client(model, tmp_path) as client:
        r = upload(client, clip.read_bytes(), "walk.mp4")
        assert r.status_code == 422, r.text
        assert (
            "this is a video, not an image: clips go in the page's Clip mode" in r.json()["detail"]
        )
