"""Nothing lost: the database's schema, a graceful restart, and SIGKILL of the real server mid-job and mid-upload.

The process tests start `main.py` (random SAM2 weights) on a data dir, kill it with SIGKILL, read
what the database had committed at that moment straight from the file, and start it again on the
same dir: every clip, object and committed frame is back, the job says interrupted and resumes
from the frame it reached, and the half upload is gone.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from streamer.app import create_app
from streamer.clip.job import FramePrompt
from streamer.clip.restore import resume_point
from streamer.objects.results import MaskResult
from streamer.settings import Settings
from streamer.storage.db import DB_NAME, MIGRATIONS, Database
from tests.test_clip_api import upload, wait_job
from tests.test_clip_media import square_center, write_clip

ROOT = Path(__file__).resolve().parent.parent


# -- the database file -----------------------------------------------------------------------------


def test_a_new_database_is_migrated_and_opening_it_again_changes_nothing(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_NAME)
    assert db.version == len(MIGRATIONS)
    db.run_sync(
        lambda c: c.execute(
            "INSERT INTO items (id, kind, filename, media, info, created, used)"
            " VALUES ('a', 'clip', 'a.mp4', 'clips/a/source.mp4', '{}', 1, 1)"
        )
    )
    db.close()
    again = Database(tmp_path / DB_NAME)
    assert again.run_sync(lambda c: c.execute("SELECT id FROM items").fetchall()[0][0]) == "a"
    again.close()


def test_a_database_of_the_first_schema_is_migrated_with_its_objects_kept(tmp_path: Path) -> None:
    """A data dir from before the verdict's note was stored opens: its objects are kept, with no
    note."""
    conn = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    conn.executescript(f"BEGIN;\n{MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
    conn.execute(
        "INSERT INTO items (id, kind, filename, media, info, created, used)"
        " VALUES ('a', 'image', 'a.png', 'images/a.png', '{}', 1, 1)"
    )
    conn.execute(
        "INSERT INTO objects (item_id, oid, source, label, description, verdict, iou, attempts)"
        " VALUES ('a', 1, 'click', 'a mug', 'A mug.', 'verified', 0.9, 1)"
    )
    conn.close()
    db = Database(tmp_path / DB_NAME)
    assert db.version == len(MIGRATIONS)
    row = db.run_sync(lambda c: dict(c.execute("SELECT * FROM objects").fetchone()))
    assert (row["description"], row["iou"], row["note"]) == ("A mug.", 0.9, None)
    db.close()


def test_a_database_of_the_second_schema_keeps_every_id_it_gave_out(tmp_path: Path) -> None:
    """A data dir from before the next id was stored: each item's next id is past its objects'."""
    conn = sqlite3.connect(tmp_path / DB_NAME, isolation_level=None)
    for number, script in enumerate(MIGRATIONS[:2], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    for item in ("a", "b"):
        conn.execute(
            "INSERT INTO items (id, kind, filename, media, info, created, used)"
            f" VALUES ('{item}', 'image', 'a.png', 'images/{item}.png', '{{}}', 1, 1)"
        )
    for oid in (1, 4):
        conn.execute(
            "INSERT INTO objects (item_id, oid, source, label)"
            f" VALUES ('a', {oid}, 'click', 'object {oid}')"
        )
    conn.close()
    db = Database(tmp_path / DB_NAME)
    got = db.run_sync(lambda c: c.execute("SELECT id, next_oid FROM items ORDER BY id").fetchall())
    assert [tuple(r) for r in got] == [("a", 5), ("b", 1)]
    db.close()


def test_a_database_from_a_newer_program_is_refused_with_what_to_do(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / DB_NAME)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this program knows"):
        Database(tmp_path / DB_NAME)


def test_a_failed_write_leaves_the_last_committed_state(tmp_path: Path) -> None:
    db = Database(tmp_path / DB_NAME)

    def half(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT INTO items (id, kind, filename, media, info, created, used)"
            " VALUES ('b', 'clip', 'b.mp4', 'm', '{}', 1, 1)"
        )
        conn.execute("INSERT INTO items (id, kind) VALUES ('c', 'not a kind')")  # fails

    with pytest.raises(sqlite3.IntegrityError):
        db.run_sync(half)
    assert db.run_sync(lambda c: c.execute("SELECT COUNT(*) FROM items").fetchone()[0]) == 0
    db.close()


# -- a graceful restart, in process ----------------------------------------------------------------


@pytest.mark.timeout(300)
def test_a_restart_brings_back_clips_objects_results_and_chat(tmp_path: Path, model: Any) -> None:
    path = write_clip(tmp_path / "moving.mp4", frames=24)
    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings, vision_model=model, reasoner=None)) as client:
        clip = upload(client, path, name="walk.mp4")
        cid = clip["id"]
        x, y = square_center(8)
        with client.websocket_connect(f"/api/clips/{cid}/ws") as ws:
            ws.receive_json()
            client.post(f"/api/clips/{cid}/clicks", json={"frame": 8, "x": x, "y": y})
            final, _ = wait_job(ws, 1)
        assert final["state"] == "done"
        before = client.get(f"/api/clips/{cid}/results", params={"start": 0, "count": 24}).json()
        # a chat turn and a description, as the reasoning routes leave them on the object
        store = client.app.state.clips
        obj = store.items[cid].objects.get(1)
        obj.described("A red square on grey.", "verified", 0.91, 1)
        obj.remember("what colour?", "red")
        store.save_object(store.items[cid], 1)

    with TestClient(create_app(settings, vision_model=model, reasoner=None)) as client:
        listed = client.get("/api/clips").json()["clips"]
        assert [(c["id"], c["filename"], c["objects"], c["state"]) for c in listed] == [
            (cid, "walk.mp4", 1, "done")
        ]
        again = client.get(f"/api/clips/{cid}").json()
        (o,) = again["objects"]
        assert (o["label"], o["description"], o["verdict"]) == (
            "A red square on grey",
            "A red square on grey.",
            "verified",
        )
        assert o["frames"] == 24 and o["job"]["state"] == "done"
        after = client.get(f"/api/clips/{cid}/results", params={"start": 0, "count": 24}).json()
        assert after["frames"] == before["frames"]
        assert (o["iou"], o["attempts"], o["chat"]) == (
            0.91,
            1,
            [{"role": "user", "content": "what colour?"}, {"role": "assistant", "content": "red"}],
        )
        # delete removes the rows and the files; the next start has nothing of it
        assert client.delete(f"/api/clips/{cid}").status_code == 200
    assert not (tmp_path / "data" / "clips" / cid).exists()
    with TestClient(create_app(settings, vision_model=model, reasoner=None)) as client:
        assert client.get("/api/clips").json()["clips"] == []
        assert client.get(f"/api/clips/{cid}").status_code == 404


# -- SIGKILL of the real server --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """main.py in its own process on a data dir, its output in a log file."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        args = ["--weights", "random", "--sam2-image-size", "128", "--device", "cpu"]
        args += ["--torch-threads", "1", "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--data-dir", str(data_dir), "--vlm-backend", "none"]
        with open(log, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "main.py", *args],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self._ready(), 180, "the server to be ready", self)

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the server exited: {self.log.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def get(self, path: str, **kw: Any) -> Any:
        r = httpx.get(self.url + path, timeout=10, **kw)
        assert r.status_code == 200, r.text
        return r.json()

    def upload(self, clip: Path) -> httpx.Response:
        with open(clip, "rb") as f:
            files = {"file": (clip.name, f, "video/mp4")}
            return httpx.post(self.url + "/api/clips", files=files, timeout=60)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)


def wait_for(check: Any, timeout: float, what: str, server: Server | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    tail = server.log.read_text()[-3000:] if server else ""
    raise AssertionError(f"gave up waiting for {what}\n{tail}")


def committed(db_path: Path, item_id: str = "%") -> tuple[int, str]:
    """What the database file holds right now: results of clip object 1 and its job state (of
    the item `item_id`, where the database holds more than one)."""
    conn = sqlite3.connect(db_path)
    try:
        where = "oid = 1 AND item_id LIKE ?"
        n = conn.execute(f"SELECT COUNT(*) FROM results WHERE {where}", (item_id,)).fetchone()[0]
        state = conn.execute(f"SELECT state FROM jobs WHERE {where}", (item_id,)).fetchone()[0]
        return n, state
    finally:
        conn.close()


def start_half_upload(url: str, clip: Path) -> socket.socket:
    """An upload that sends its headers and part of the file, then stalls (the client is slow)."""
    host, port = url.removeprefix("http://").split(":")
    body = clip.read_bytes()
    boundary = "fmuboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="half.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    length = len(head) + len(body) + len(tail)
    s = socket.create_connection((host, int(port)))
    s.sendall(
        (
            f"POST /api/clips HTTP/1.1\r\nHost: {host}\r\nContent-Length: {length}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
        ).encode()
        + head
        + body[: len(body) // 2]
    )
    return s


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_sigkill_mid_job_and_mid_upload_loses_nothing_committed(tmp_path: Path) -> None:
    frames, click = 240, 60
    path = write_clip(tmp_path / "long.mp4", frames=frames)
    data = tmp_path / "data"
    server = Server(data, tmp_path / "first.log")
    try:
        r = server.upload(path)
        assert r.status_code == 201, r.text
        cid = r.json()["id"]
        x, y = square_center(click)
        r = httpx.post(
            f"{server.url}/api/clips/{cid}/clicks",
            json={"frame": click, "x": x, "y": y},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        full_total = r.json()["job"]["total"]

        def tracked_some() -> bool:
            (o,) = server.get(f"/api/clips/{cid}")["objects"]
            assert o["job"]["state"] in ("queued", "running"), o["job"]
            return o["frames"] >= 30

        wait_for(tracked_some, 600, "the job to track 30 frames", server)
        sock = start_half_upload(server.url, path)
        wait_for(lambda: list((data / "clips").glob("*/*.upload")), 60, "the half upload on disk")
        server.kill()
        sock.close()
    finally:
        server.stop()

    n_committed, state = committed(data / DB_NAME)
    assert n_committed > 0 and state == "running"

    server = Server(data, tmp_path / "second.log")
    try:
        (listed,) = server.get("/api/clips")["clips"]
        assert (listed["id"], listed["state"], listed["objects"]) == (cid, "interrupted", 1)
        (o,) = server.get(f"/api/clips/{cid}")["objects"]
        assert o["job"]["state"] == "interrupted"
        assert o["frames"] == n_committed  # every committed frame, nothing more
        got = server.get(f"/api/clips/{cid}/results", params={"start": 0, "count": frames})
        assert sum(len(per) for per in got["frames"].values()) == n_committed
        # the half upload is gone, and the log says what was reconciled
        assert list((data / "clips").iterdir()) == [data / "clips" / cid]
        assert "no clip in the database owns it" in server.log.read_text()

        r = httpx.post(f"{server.url}/api/clips/{cid}/objects/1/resume", timeout=30)
        assert r.status_code == 200, r.text
        job = r.json()["job"]
        assert job["total"] < full_total  # from where it stopped, not from the click again

        def finished() -> bool:
            (o,) = server.get(f"/api/clips/{cid}")["objects"]
            assert o["job"]["state"] in ("queued", "running", "done"), o["job"]
            return o["job"]["state"] == "done"

        wait_for(finished, 600, "the resumed job to finish", server)
        got = server.get(f"/api/clips/{cid}/results", params={"start": 0, "count": frames})
        assert sorted(int(i) for i in got["frames"]) == list(range(frames))
        # a second resume of a finished job is refused with the reason
        r = httpx.post(f"{server.url}/api/clips/{cid}/objects/1/resume", timeout=30)
        assert r.status_code == 409 and "done" in r.json()["detail"]
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_graceful_stop_mid_job_leaves_it_interrupted_and_resumable(tmp_path: Path) -> None:
    path = write_clip(tmp_path / "long.mp4", frames=200)
    data = tmp_path / "data"
    server = Server(data, tmp_path / "first.log")
    try:
        r = server.upload(path)
        cid = r.json()["id"]
        x, y = square_center(0)
        httpx.post(f"{server.url}/api/clips/{cid}/clicks", json={"frame": 0, "x": x, "y": y})
        wait_for(
            lambda: server.get(f"/api/clips/{cid}")["objects"][0]["frames"] >= 10,
            600,
            "the job to track 10 frames",
            server,
        )
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=60)
    finally:
        server.stop()
    n_committed, state = committed(data / DB_NAME)
    assert state == "interrupted" and n_committed >= 10
    assert os.path.exists(data / "clips" / cid)  # a restart keeps the clip's files


# -- where an interrupted job goes on from ---------------------------------------------------------


def _result(present: bool) -> MaskResult:
    box = (1.0, 2.0, 11.0, 12.0) if present else None
    return MaskResult({"size": [20, 20], "counts": "400"}, box, 0.9 if present else 0.1, present)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("phase", "position", "visible", "expected"),
    [
        # forward, stopped at 10, seen at 9 but not at 10: re-seeded with frame 9's box
        ("forward", 10, {9}, ("forward", 9, (1.0, 2.0, 11.0, 12.0))),
        # forward, never visible since the click on 5: from the click itself
        ("forward", 10, set(), ("forward", 5, None)),
        # backward, stopped at 2 and visible there: from 2 with its box
        ("backward", 2, {2, 3}, ("backward", 2, (1.0, 2.0, 11.0, 12.0))),
        # backward, stopped between the passes (saved so by an earlier version): from the click
        ("backward", None, {4, 5, 6}, ("backward", 5, None)),
        # a job that had not started: over from the clicks
        ("queued", None, set(), None),
    ],
)
def test_an_interrupted_job_resumes_from_the_nearest_frame_it_can_seed(
    phase: str, position: int | None, visible: set[int], expected: Any
) -> None:
    prompts = {5: FramePrompt([(3.0, 4.0)], [1])}
    results = {i: _result(i in visible) for i in range(0, 11)}
    got = resume_point(phase, position, prompts, results)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert (got[0], got[1], None if got[2] is None else got[2].box) == expected


@pytest.mark.timeout(300)
def test_a_restart_brings_back_images_their_masks_and_chat(tmp_path: Path, model: Any) -> None:
    from tests.test_image_api import encoded, make_client
    from tests.test_image_api import upload as upload_image

    with make_client(model, tmp_path) as client:
        img = upload_image(client, encoded("PNG"), "desk.png").json()
        iid = img["id"]
        r = client.post(f"/api/images/{iid}/clicks", json={"x": 60, "y": 50})
        assert r.status_code == 200, r.text
        before = r.json()["object"]
        store = client.app.state.images
        obj = store.items[iid].objects.get(1)
        # a description whose check could not run: a restart keeps why
        obj.described("A red mug.", "unverified", None, 1, "grounding it failed: VLM down")
        obj.remember("full?", "empty")
        store.save_object(store.items[iid], 1)
        # a file no row owns (a crash between writing it and committing the row)
        (tmp_path / "data" / "images" / "orphan.jpg").write_bytes(b"x")

    with make_client(model, tmp_path) as client:
        again = client.get(f"/api/images/{iid}").json()
        (o,) = again["objects"]
        assert (o["rle"], o["box"], o["presence_probability"]) == (
            before["rle"],
            before["box"],
            before["presence_probability"],
        )
        assert (o["label"], o["description"], o["verdict"], o["iou"], o["note"]) == (
            "A red mug",
            "A red mug.",
            "unverified",
            None,
            "grounding it failed: VLM down",
        )
        assert list(client.app.state.images.items[iid].objects.get(1).history) == [
            {"role": "user", "content": "full?"},
            {"role": "assistant", "content": "empty"},
        ]
        assert not (tmp_path / "data" / "images" / "orphan.jpg").exists()
        assert client.get(f"/api/images/{iid}/image").status_code == 200
        # the embedding is computed again at the first click: refining works
        r = client.post(f"/api/images/{iid}/clicks", json={"x": 10, "y": 10, "object_id": 1})
        assert r.status_code == 200, r.text
        assert client.delete(f"/api/images/{iid}").status_code == 200
    with make_client(model, tmp_path) as client:
        assert client.get(f"/api/images/{iid}").status_code == 404


def test_after_a_restart_the_least_recently_used_clip_goes_first_not_the_oldest(
    tmp_path: Path, model: Any
) -> None:
    """Kept two at most: the first clip uploaded, opened since, outlives a restart and the next
    upload; the second, not opened since it came, makes room."""
    path = write_clip(tmp_path / "moving.mp4", frames=4)
    settings = Settings(data_dir=tmp_path / "data")
    with TestClient(create_app(settings, vision_model=model, reasoner=None)) as client:
        client.app.state.clips.keep = 2
        first, second = (upload(client, path)["id"] for _ in range(2))
        time.sleep(0.01)  # opened after the second came, by the clock the database keeps
        assert client.get(f"/api/clips/{first}").status_code == 200
    with TestClient(create_app(settings, vision_model=model, reasoner=None)) as client:
        client.app.state.clips.keep = 2
        third = upload(client, path)["id"]
        assert client.get(f"/api/clips/{second}").status_code == 404
        assert {c["id"] for c in client.get("/api/clips").json()["clips"]} == {first, third}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["clip", "image"])
def test_a_restart_keeps_finds_checks_and_gives_no_id_out_twice(
    kind: str, tmp_path: Path, model: Any
) -> None:
    """A Find's candidate the VLM rejected, kept flagged (all_candidates), came back from a
    restart as an ordinary object; and the id of an object removed before the restart was
    given to the next new one (ids are never given out twice: exports before and after would
    name two objects alike)."""
    from streamer.services import build_reasoner
    from tests.conftest import CheckedFindScript
    from tests.fakes.openai_server import ScriptedVLMServer
    from tests.test_image_api import encoded

    w, h = (160, 120) if kind == "clip" else (128, 96)
    frame = {"frame": 0} if kind == "clip" else {}
    script = CheckedFindScript([(20.0, 20.0, 60.0, 60.0)], ["No, it is not."], (w, h))
    with ScriptedVLMServer(answer=script) as vlm:
        reasoner, _ = build_reasoner(Settings(vlm_url=vlm.url))

        def client() -> TestClient:
            settings = Settings(data_dir=tmp_path / "data")
            return TestClient(create_app(settings, vision_model=model, reasoner=reasoner))

        with client() as c:
            if kind == "clip":
                item = f"/api/clips/{upload(c, write_clip(tmp_path / 'a.mp4', frames=4))['id']}"
            else:
                r = c.post("/api/images", files={"file": ("a.png", encoded("PNG"), "image/png")})
                item = f"/api/images/{r.json()['id']}"
            found = c.post(
                f"{item}/find", json={**frame, "phrase": "a cup", "all_candidates": True}
            )
            assert found.status_code == 200, found.text
            assert [o["check"] for o in found.json()["objects"]] == ["no_match"]
            for x in (10, 100):  # objects 2 and 3; 3 is removed
                r = c.post(f"{item}/clicks", json={**frame, "x": x, "y": 10})
                assert r.status_code == 200, r.text
            assert c.delete(f"{item}/objects/3").status_code == 200
            cookies = dict(c.cookies)
            # the clip's jobs end before the restart (an interrupted one resumes; not this test's)
            if kind == "clip":
                for _ in range(600):
                    jobs = [o["job"] for o in c.get(item).json()["objects"]]
                    if all(j["state"] not in ("queued", "running") for j in jobs):
                        break
                    time.sleep(0.1)

        with client() as c:
            c.cookies.update(cookies)
            objects = c.get(item).json()["objects"]
            assert [(o["id"], o["source"], o["find_check"]) for o in objects] == [
                (1, "find", "no_match"),
                (2, "click", None),
            ]
            r = c.post(f"{item}/clicks", json={**frame, "x": 60, "y": 90})
            assert r.status_code == 200, r.text
            new = r.json()["object_id"] if kind == "clip" else r.json()["object"]["id"]
            assert new == 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("mode", "damage"), [("clip", "gone"), ("image", "gone"), ("image", "garbage")]
)
def test_a_restart_forgets_an_item_whose_file_is_gone_and_keeps_the_rest(
    tmp_path: Path, model: Any, mode: str, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two items kept; the media file of one is deleted (or overwritten with junk) while the
    service is down. The next start lists the other only, says in the log which one it forgot
    and why, and the start after that has the same."""
    from tests.test_image_api import encoded
    from tests.test_image_api import upload as upload_image

    settings = Settings(data_dir=tmp_path / "data")
    path = write_clip(tmp_path / "moving.mp4", frames=8) if mode == "clip" else None
    with TestClient(create_app(settings, vision_model=model, reasoner=None)) as client:
        if mode == "clip":
            ids = [upload(client, path, name=f"{n}.mp4")["id"] for n in ("a", "b")]
            media = client.app.state.clips.items[ids[0]].path
        else:
            ids = [upload_image(client, encoded("PNG"), f"{n}.png").json()["id"] for n in "ab"]
            media = client.app.state.images.items[ids[0]].display_path
    if damage == "gone":
        media.unlink()
    else:
        media.write_bytes(b"not an image any more")

    for _ in range(2):
        with TestClient(create_app(settings, vision_model=model, reasoner=None)) as client:
            listed = client.get(f"/api/{mode}s").json()[f"{mode}s"]
            assert [item["id"] for item in listed] == [ids[1]]
            assert client.get(f"/api/{mode}s/{ids[0]}").status_code == 404
            assert client.get(f"/api/{mode}s/{ids[1]}").status_code == 200
    forgot = [r.getMessage() for r in caplog.records if "forgetting it" in r.getMessage()]
    assert len(forgot) == 1 and ids[0] in forgot[0] and "a." in forgot[0], forgot


def test_a_restart_removes_the_renders_and_part_files_a_stopped_process_left_in_a_clip(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A process stopped mid-export (a crash, a kill) left its render's part file, a finished
    render nothing will send again and a thumbnail's part file in the clip's folder; they stayed
    until the clip went (an export of a long clip is hundreds of MB). The next start removes them
    and says so; the clip, its thumbnail and a new export are as before."""
    settings = Settings(data_dir=tmp_path / "data")
    path = write_clip(tmp_path / "moving.mp4", frames=8)
    with TestClient(create_app(settings, reasoner=None, load_vision=False)) as client:
        cid = upload(client, path)["id"]
        assert client.get(f"/api/clips/{cid}/thumbnail.jpg").status_code == 200
        folder = client.app.state.clips.items[cid].dir  # type: ignore[attr-defined]
    kept = sorted(p.name for p in folder.iterdir())
    left = ["export-0a1b2c3d.part.mp4", "export-4e5f6a7b.mp4", "thumb.9c8d7e6f.part"]
    for name in left:
        (folder / name).write_bytes(b"\0" * 1000)

    with TestClient(create_app(settings, reasoner=None, load_vision=False)) as client:
        assert sorted(p.name for p in folder.iterdir()) == kept
        said = [r.getMessage() for r in caplog.records if "left unfinished" in r.getMessage()]
        assert len(said) == 1 and all(name in said[0] for name in left), said
        assert client.get(f"/api/clips/{cid}/thumbnail.jpg").status_code == 200
        r = client.get(f"/api/clips/{cid}/export.mp4")
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
