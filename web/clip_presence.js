// Along Clip's scrubber, one row per object: where it is tracked and present (its colour), tracked
// but lost (grey), or not tracked yet (empty), as the server's /api/clips/{id}/presence says.

import { json } from "./client.js";
import { el } from "./dom.js";
import { colorFor, css } from "./overlay.js";

// scrubber: the range input the strip lies under (its width, until the strip has one);
// current(): the clip shown, or null; store: the object store (the rows are its objects').
export function createPresenceStrip({ scrubber, current, store }) {
  const strip = el("canvas", { "data-testid": "presence-strip", class: "presence-strip", height: "0" });
  strip.title = "where each object is tracked: its colour = present, grey = lost, empty = not tracked yet";
  let presence = {}; // object id -> one character per frame ("1" present, "0" lost, "." not tracked)
  let presenceLoading = null;
  let presenceAgain = false;

  // Drawn in device pixels (sharp edges on a 2x screen), again whenever the strip's width changes.
  let drawnWidth = 0;
  function draw() {
    const clip = current();
    const ids = store.all().map((o) => o.id).filter((id) => presence[String(id)]);
    const rowH = 4; // CSS px
    const dpr = window.devicePixelRatio || 1;
    drawnWidth = strip.clientWidth || scrubber.clientWidth || 300;
    const width = Math.max(1, Math.round(drawnWidth * dpr));
    const row = Math.round(rowH * dpr);
    strip.width = width;
    strip.height = ids.length * row;
    strip.style.height = `${ids.length * rowH}px`;
    if (!clip || !ids.length) return;
    const ctx = strip.getContext("2d");
    const n = clip.frame_count;
    const gap = Math.max(1, Math.round(dpr));
    ids.forEach((id, r) => {
      const line = presence[String(id)];
      for (let i = 0; i < n; i++) {
        const c = line[i];
        if (c === ".") continue;
        ctx.fillStyle = c === "1" ? css(colorFor(id)) : "#555b66";
        const x0 = Math.floor((i * width) / n);
        const x1 = Math.max(x0 + 1, Math.floor(((i + 1) * width) / n));
        ctx.fillRect(x0, r * row, x1 - x0, row - gap);
      }
    });
  }
  // A wider or narrower page (or panel) stretched the old bitmap; the rows are drawn again.
  new ResizeObserver(() => {
    if (strip.clientWidth && strip.clientWidth !== drawnWidth) draw();
  }).observe(strip);

  // Fetch where each object is tracked; one request at a time, and once more if asked meanwhile.
  function refresh() {
    const clip = current();
    if (!clip) return;
    if (presenceLoading) { presenceAgain = true; return; }
    const id = clip.id;
    presenceLoading = json("GET", `/api/clips/${id}/presence`)
      .then((body) => {
        const now = current();
        if (now && now.id === id) { presence = body.objects; draw(); }
      })
      .catch(() => { /* the strip is a hint; the next progress tries again */ })
      .finally(() => {
        presenceLoading = null;
        if (presenceAgain) { presenceAgain = false; refresh(); }
      });
  }

  return {
    element: strip,
    refresh,
    // Another clip shown: no rows until its presence is fetched.
    clear() {
      presence = {};
      draw();
    },
  };
}
