"""Clip rows: what of a clip, its objects, per-frame results and jobs the database keeps, and reading it back.

Functions of a connection, each run by Database as (part of) one transaction. JSON columns hold
what SQL never queries (a frame's RLE, an object's prompts and chat).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict
from fractions import Fraction
from typing import Any

from streamer.clip.video_io import VideoInfo
from streamer.objects.results import MaskResult

# -- writing ---------------------------------------------------------------------------------------


def info_json(info: VideoInfo, *, playable: bool, mime: str) -> str:
    d = asdict(info)
    d["time_base"] = [info.time_base.numerator, info.time_base.denominator]
    return json.dumps({"video": d, "playable": playable, "mime": mime})


def info_from_json(text: str) -> tuple[VideoInfo, bool, str]:
    d = json.loads(text)
    v = dict(d["video"])
    v["time_base"] = Fraction(*v["time_base"])
    if "pixel_aspect" in v:  # (kept since it was read: a clip kept before is square)
        v["pixel_aspect"] = tuple(v["pixel_aspect"])
    return VideoInfo(**v), bool(d["playable"]), str(d["mime"])


def insert_clip(
    conn: sqlite3.Connection,
    clip_id: str,
    filename: str,
    media: str,
    info: str,
    size: int,
    owner: str | None = None,
    kind: str = "clip",
) -> None:
    now = time.time()
    conn.execute(
        "INSERT INTO items (id, kind, filename, media, info, bytes, created, used, owner)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (clip_id, kind, filename, media, info, size, now, now, owner),
    )


def save_image_object(
    conn: sqlite3.Connection, item_id: str, row: dict[str, Any], result: MaskResult | None
) -> None:
    """An image's object and its one mask (frame 0), in one transaction."""
    save_object(conn, item_id, row)
    clear_results(conn, item_id, row["oid"])
    if result is not None:
        save_results(conn, item_id, row["oid"], [(0, result)])


def delete_item(conn: sqlite3.Connection, item_id: str) -> None:
    conn.execute("DELETE FROM items WHERE id = ?", (item_id,))


def touch(conn: sqlite3.Connection, item_id: str) -> None:
    conn.execute("UPDATE items SET used = ? WHERE id = ?", (time.time(), item_id))


def save_object(conn: sqlite3.Connection, item_id: str, row: dict[str, Any]) -> None:
    """Insert or update one object (label, description, verdict, chat, prompts, Find's check);
    its id stays given out (items.next_oid), whatever becomes of the object."""
    conn.execute(
        "INSERT INTO objects (item_id, oid, source, label, description, verdict, iou, attempts,"
        " note, history, prompts, find_check) VALUES (:item_id, :oid, :source, :label,"
        " :description, :verdict, :iou, :attempts, :note, :history, :prompts, :find_check)"
        " ON CONFLICT (item_id, oid) DO UPDATE SET source = excluded.source,"
        " label = excluded.label, description = excluded.description,"
        " verdict = excluded.verdict, iou = excluded.iou, attempts = excluded.attempts,"
        " note = excluded.note, history = excluded.history, prompts = excluded.prompts,"
        " find_check = excluded.find_check",
        {**row, "item_id": item_id},
    )
    conn.execute(
        "UPDATE items SET next_oid = MAX(next_oid, ?) WHERE id = ?", (row["oid"] + 1, item_id)
    )
    touch(conn, item_id)


def delete_object(conn: sqlite3.Connection, item_id: str, oid: int) -> None:
    conn.execute("DELETE FROM objects WHERE item_id = ? AND oid = ?", (item_id, oid))


def clear_results(conn: sqlite3.Connection, item_id: str, oid: int) -> None:
    conn.execute("DELETE FROM results WHERE item_id = ? AND oid = ?", (item_id, oid))


def save_results(
    conn: sqlite3.Connection, item_id: str, oid: int, results: list[tuple[int, MaskResult]]
) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO results (item_id, oid, frame, rle, box, score, present)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (
                item_id,
                oid,
                frame,
                json.dumps(r.rle),
                None if r.box is None else json.dumps(list(r.box)),
                r.presence_probability,  # kept in the `score` column
                int(r.present),
            )
            for frame, r in results
        ],
    )


def save_job(conn: sqlite3.Connection, item_id: str, oid: int, job: dict[str, Any]) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO jobs (item_id, oid, job_id, state, phase, position, done, total,"
        " error, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            item_id,
            oid,
            job["job_id"],
            job["state"],
            job["phase"],
            job.get("position"),
            job["done"],
            job["total"],
            job.get("error"),
            time.time(),
        ),
    )


def record_progress(
    conn: sqlite3.Connection,
    item_id: str,
    oid: int,
    results: list[tuple[int, MaskResult]],
    job: dict[str, Any],
) -> None:
    """A job's new frames and where it stands, in one transaction (so they always agree)."""
    if conn.execute(
        "SELECT 1 FROM objects WHERE item_id = ? AND oid = ?", (item_id, oid)
    ).fetchone():
        save_results(conn, item_id, oid, results)
        save_job(conn, item_id, oid, job)


# -- reading back ----------------------------------------------------------------------------------


def interrupt_running(conn: sqlite3.Connection) -> int:
    """Jobs the last process left queued or running (it stopped or was killed): interrupted."""
    cur = conn.execute(
        "UPDATE jobs SET state = 'interrupted', updated = ? WHERE state IN ('queued', 'running')",
        (time.time(),),
    )
    return cur.rowcount


def items(conn: sqlite3.Connection, kind: str) -> list[dict[str, Any]]:
    """The items of `kind`, least recently used first: the order a store keeps them in, so the
    first it evicts after a restart is the one used longest ago, not the oldest upload."""
    rows = conn.execute(
        "SELECT * FROM items WHERE kind = ? ORDER BY used, created", (kind,)
    ).fetchall()
    return [dict(r) for r in rows]


def load_clip(conn: sqlite3.Connection, item_id: str) -> dict[str, Any]:
    """Objects (with prompts and chat), their results and jobs, as plain data."""
    objects = [
        dict(r)
        for r in conn.execute(
            "SELECT * FROM objects WHERE item_id = ? ORDER BY oid", (item_id,)
        ).fetchall()
    ]
    results: dict[int, dict[int, MaskResult]] = {}
    for r in conn.execute(
        "SELECT oid, frame, rle, box, score, present FROM results WHERE item_id = ?", (item_id,)
    ):
        box = None if r["box"] is None else tuple(json.loads(r["box"]))
        results.setdefault(r["oid"], {})[r["frame"]] = MaskResult(
            json.loads(r["rle"]),
            box,  # type: ignore[arg-type]
            float(r["score"]),
            bool(r["present"]),
        )
    jobs = {
        r["oid"]: dict(r)
        for r in conn.execute("SELECT * FROM jobs WHERE item_id = ?", (item_id,)).fetchall()
    }
    return {"objects": objects, "results": results, "jobs": jobs}
