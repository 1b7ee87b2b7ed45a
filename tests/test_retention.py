"""Retention: items unused past --keep-days go, then a tiny disk budget removes the least recently
used clip or image not in use, in one order over both; the owner's library says why."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from streamer.app import create_app
from streamer.http.access import OWNER_COOKIE
from streamer.settings import Settings
from tests.test_clip_api import upload


@pytest.fixture(scope="module")
def noise_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 frames of noise at 320x240: about 0.7 MB (noise does not compress), so two pass 1 MB."""
    path = tmp_path_factory.mktemp("noise") / "noise.mp4"
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 320, 240, "yuv420p"
        for _ in range(20):
            img = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    assert 0.5e6 < path.stat().st_size < 1e6
    return path


def expect_retired(client: TestClient, kind: str, kept: list[str], gone: tuple[str, str]) -> None:
    """The library of `kind` lists only `kept`, says `gone` (id, filename) went over the 1 MB
    budget as the least recently used, and the API no longer has it."""
    listed = client.get(f"/api/{kind}s").json()
    assert [c["id"] for c in listed[f"{kind}s"]] == kept
    (note,) = listed["removed"]
    assert (note["id"], note["filename"]) == gone
    assert "1 MB budget" in note["reason"] and f"least recently used {kind}" in note["reason"]
    assert client.get(f"/api/{kind}s/{gone[0]}").status_code == 404
    # another browser's library says nothing of it, not even its name
    other = client.get(f"/api/{kind}s", cookies={OWNER_COOKIE: "f" * 32}).json()
    assert other["removed"] == []


def test_over_the_budget_the_least_recently_used_clip_not_in_use_goes(
    tmp_path: Path, noise_clip: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", disk_budget_mb=1)
    with TestClient(create_app(settings, reasoner=None, load_vision=False)) as client:
        a = upload(client, noise_clip, name="a.mp4")["id"]
        b = upload(client, noise_clip, name="b.mp4")["id"]
        expect_retired(client, "clip", kept=[b], gone=(a, "a.mp4"))
        assert not (tmp_path / "data" / "clips" / a).exists()

        # b is open in a page: a third upload goes over the budget, and nothing in use is removed
        with client.websocket_connect(f"/api/clips/{b}/ws") as ws:
            assert ws.receive_json()["type"] == "hello"
            c = upload(client, noise_clip, name="c.mp4")["id"]
            assert [x["id"] for x in client.get("/api/clips").json()["clips"]] == [c, b]
    # nor across a restart: the database lists the same two
    with TestClient(create_app(settings, reasoner=None, load_vision=False)) as client:
        ids = {x["id"] for x in client.get("/api/clips").json()["clips"]}
        assert ids <= {b, c} and len(ids) >= 1  # over budget at start: the older one may go


def test_clips_and_images_share_the_budget_and_the_least_recently_used_of_both_goes(
    tmp_path: Path, noise_clip: Path, sam2_tiny_128: Any
) -> None:
    """An image, then a clip that takes the data dir over its budget: the image, used longest
    ago, is what goes (a clip upload looked at clips only), and Image's library says why."""
    noise = np.random.default_rng(1).integers(0, 255, (400, 400, 3), dtype=np.uint8)
    picture = tmp_path / "noise.png"
    Image.fromarray(noise).save(picture)
    settings = Settings(data_dir=tmp_path / "data", disk_budget_mb=1)
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    with TestClient(app) as client:
        file = ("noise.png", picture.read_bytes(), "application/octet-stream")
        image = client.post("/api/images", files={"file": file})
        assert image.status_code == 201, image.text
        iid = image.json()["id"]
        assert [x["id"] for x in client.get("/api/images").json()["images"]] == [iid]  # fits
        clip = upload(client, noise_clip, name="a.mp4")["id"]
        expect_retired(client, "image", kept=[], gone=(iid, "noise.png"))
        assert [x["id"] for x in client.get("/api/clips").json()["clips"]] == [clip]
        assert client.get("/api/clips").json()["removed"] == []


@pytest.mark.parametrize("kind", ["clip", "image"])
def test_an_item_unused_past_keep_days_is_removed_with_the_reason(
    kind: str, tmp_path: Path, noise_clip: Path, sam2_tiny_128: Any
) -> None:
    """The one retention rule, in both modes that keep uploads."""
    media = noise_clip if kind == "clip" else tmp_path / "square.png"
    if kind == "image":
        Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(media)
    settings = Settings(data_dir=tmp_path / "data", keep_days=7)
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    with TestClient(app) as client:
        ids = []
        for name in ("old", "new"):
            file = (f"{name}{media.suffix}", media.read_bytes(), "application/octet-stream")
            answer = client.post(f"/api/{kind}s", files={"file": file})
            assert answer.status_code == 201, answer.text
            ids.append(answer.json()["id"])
        old, new = ids
        store = getattr(client.app.state, f"{kind}s")
        store.items[old].used = time.time() - 8 * 86400
        # while one of its objects is being described it is in use, and stays
        obj = store.items[old].objects.add("click")
        with obj.running("describe"):
            assert client.portal.call(store.enforce_retention) == []
        removed = client.portal.call(store.enforce_retention)  # what the minute timer runs
        assert [r.id for r in removed] == [old]
        assert "not opened for 8.0 days (kept 7)" in removed[0].reason
        library = client.get(f"/api/{kind}s").json()
        assert [x["id"] for x in library[f"{kind}s"]] == [new]
        assert [(r["id"], r["filename"]) for r in library["removed"]] == [
            (old, f"old{media.suffix}")
        ]
        assert client.get(f"/api/{kind}s/{old}").status_code == 404


@pytest.mark.parametrize("meanwhile", ["described", "deleted"])
def test_an_item_put_to_use_or_deleted_while_retention_measures_is_not_removed_by_it(
    meanwhile: str, tmp_path: Path, sam2_tiny_128: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over the disk budget, retention measures the data dir (a worker thread) and chooses what
    goes: meanwhile a describe started on the image, or its owner deleted it. It is not removed
    by retention (the describe was cut off; a deleted one was discarded twice and noted as
    removed by the server)."""
    from streamer import metrics

    Image.fromarray(np.full((120, 160, 3), 90, np.uint8)).save(tmp_path / "old.png")
    settings = Settings(data_dir=tmp_path / "data", disk_budget_mb=1)
    app = create_app(settings, vision_model=sam2_tiny_128, reasoner=None, load_vision=False)
    with TestClient(app) as client:
        file = ("old.png", (tmp_path / "old.png").read_bytes(), "image/png")
        old = client.post("/api/images", files={"file": file}).json()["id"]
        store = client.app.state.images
        obj = store.items[old].objects.add("click")
        describing = obj.running("describe")

        def over_budget_and_meanwhile(root: Path) -> int:
            if meanwhile == "described":
                client.portal.call(lambda: describing.__enter__())  # type: ignore[arg-type]
            else:
                client.portal.call(store.delete, old)
            return 10**9  # far over the budget: every idle item is chosen

        monkeypatch.setattr(metrics, "disk_used", over_budget_and_meanwhile)
        assert client.portal.call(store.enforce_retention) == []
        library = client.get("/api/images").json()
        assert library["removed"] == []
        assert [x["id"] for x in library["images"]] == ([old] if meanwhile == "described" else [])
        if meanwhile == "described":
            describing.__exit__(None, None, None)
            monkeypatch.setattr(metrics, "disk_used", lambda root: 10**9)
            assert [r.id for r in client.portal.call(store.enforce_retention)] == [old]


DAY = 86400.0
# (name, last used days ago, bytes) of three idle items
ITEMS = [("old", 10.0, 400_000), ("mid", 3.0, 300_000), ("new", 0.5, 200_000)]


@pytest.mark.parametrize(
    ("keep_days", "disk_used", "budget_mb", "expected"),
    [
        # nothing set: nothing goes
        (0, 2_000_000, 0, []),
        # unused longer than kept: only that one, whatever the disk
        (5, 900_000, 0, ["old"]),
        # over budget: least recently used first, until it fits (1.2 MB - 0.4 - 0.3 <= 1 MB)
        (0, 1_200_000, 1, ["old"]),
        (0, 1_600_000, 1, ["old", "mid"]),
        # an expired item's bytes count as freed before the budget is checked
        (5, 1_300_000, 1, ["old"]),
        # never more than offered, even when it still does not fit
        (0, 9_000_000, 1, ["old", "mid", "new"]),
    ],
)
def test_retention_chooses_the_least_recently_used_and_says_why(
    keep_days: float, disk_used: int, budget_mb: int, expected: list[str]
) -> None:
    from streamer.storage.retention import choose

    now = 100 * DAY
    chosen = choose(
        reversed(ITEMS),  # the order offered does not matter
        used_at=lambda i: now - i[1] * DAY,
        size_of=lambda i: i[2],
        now=now,
        keep_days=keep_days,
        disk_used=disk_used,
        budget_mb=budget_mb,
        kind_of=lambda i: "image",
    )
    assert [item[0] for item, _ in chosen] == expected
    for item, why in chosen:
        expired = keep_days and item[1] > keep_days
        assert ("not opened for" in why) if expired else ("least recently used image" in why)
