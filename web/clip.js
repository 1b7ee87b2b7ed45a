// Clip mode: upload a video, click an object on any frame to track it through the whole clip
// (a server job, progress over /api/clips/{id}/ws), play it back with overlays, describe / chat /
// find, and download the JSON and overlay-video exports. A new object is described at once
// from its clicked frame when the server has a VLM (the click's answer says so), as in every mode.
import { json, openSocket, request, stoppableStream } from "./client.js";
import { acceptFiles } from "./drop.js";
import { itemActions, newestRequest } from "./item.js";
import { colorFor, css } from "./overlay.js";
import { createLibrary } from "./library.js";
import { el } from "./shell.js";

export function createClipMode(shell) {
  const { store, stage } = shell;
  const refining = stoppableStream();
  const finding = stoppableStream();
  // web/index.html belongs to the shell; the mode's stylesheet is linked from here.
  document.head.append(el("link", { rel: "stylesheet", href: "/clip.css" }));

  // --- clip mode ------------------------------------------------------------------------------

  const video = document.querySelector("#clip-video");
  const stageEl = document.querySelector("#stage");
  const tools = document.querySelector("#clip-tools");

  // The picker offers every video and, by name, the files the server takes (its capabilities'
  // video_suffixes, from streamer/clip/video_io.py's VIDEO_FORMATS; activate() fills them in).
  const fileInput = el("input", { type: "file", accept: "video/*", "data-testid": "upload-input", id: "clip-file" });
  const fileLabel = el("label", { for: "clip-file", class: "clip-upload" }, "Upload clip");
  const playBtn = el("button", { type: "button", "data-testid": "clip-play", disabled: "" }, "Play");
  const scrubber = el("input", { type: "range", min: "0", max: "0", step: "1", value: "0", "data-testid": "scrubber", disabled: "" });
  const frameLabel = el("span", { "data-testid": "frame-label", class: "clip-frame" }, "no clip");
  // Hidden until it has something to say (an upload, a clip's figures, a job).
  const progress = el("div", { "data-testid": "progress", "data-state": "idle", class: "clip-progress", hidden: "" });
  const progressBar = el("span", { class: "bar" });
  const progressText = el("span", { class: "text" }, "");
  const cancelBtn = el("button", { type: "button", "data-testid": "cancel-job", hidden: "" }, "Cancel");
  const resumeBtn = el("button", { type: "button", "data-testid": "resume-job", hidden: "" }, "Resume");
  progress.append(progressBar, progressText, cancelBtn, resumeBtn);
  const exportJson = el("a", { "data-testid": "export-json", class: "clip-export disabled", download: "" }, "Export JSON");
  const exportVideo = el("a", { "data-testid": "export-video", class: "clip-export disabled", download: "" }, "Export video");
  // Along the scrubber, one row per object: where it is tracked and present (its colour), tracked
  // but lost (grey), or not tracked yet (empty).
  const strip = el("canvas", { "data-testid": "presence-strip", class: "presence-strip", height: "0" });
  strip.title = "where each object is tracked: its colour = present, grey = lost, empty = not tracked yet";
  const scrub = el("div", { class: "clip-scrub" });
  scrub.append(scrubber, strip);
  tools.append(fileLabel, fileInput, playBtn, scrub, frameLabel, exportJson, exportVideo, progress);

  let clip = null; // the server's clip object
  let ws = null;
  let activeMode = false;
  let currentFrame = 0;
  const jobs = new Map(); // object id -> last job message
  let cache = new Map(); // frame -> [{id, rle, box, presence_probability, present}]
  let generation = 0; // bumps when results change; cached windows from older generations refetch
  let cacheGen = new Map(); // frame -> generation it was fetched at
  let fetching = null;
  let lastClickFrame = null; // the frame the last click (or Find) was on: its label says so
  let lastClickWhat = "click";
  const showing = newestRequest(); // an upload's or an open's answer shows only if the newest

  // The gap from frame i to the next (the last frame: the one before it, else an average frame).
  // Tolerances scale with it, not with the average frame: in a variable-frame-rate clip's burst
  // a fraction of the average frame is more than a whole frame.
  function gapAfter(i) {
    const times = clip.frame_times;
    if (i + 1 < times.length) return times[i + 1] - times[i];
    if (i > 0) return times[i] - times[i - 1];
    return clip.fps > 0 ? 1 / clip.fps : 0.001;
  }

  function frameAt(t) {
    // The frame on screen at time t: the last one starting at or before it, or the next one when
    // t is within a tenth of the gap before it (float rounding), exactly as the server's
    // VideoInfo.index_at.
    const times = clip.frame_times;
    let lo = 0;
    let hi = times.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (times[mid] <= t) lo = mid;
      else hi = mid - 1;
    }
    if (lo + 1 < times.length && times[lo + 1] - t <= 0.1 * gapAfter(lo)) lo += 1;
    return lo;
  }

  function timeForFrame(i) {
    // Seek a quarter of the way to the next frame, so rounding never lands on a neighbour.
    return clip.frame_times[i] + 0.25 * gapAfter(i);
  }

  // The bar alone: Cancel and Resume are the jobs' (summarizeJobs), not an upload's or an export's.
  function setProgress(state, text, percent) {
    progress.dataset.state = state;
    progress.hidden = !text;
    progressText.textContent = text;
    progressBar.style.width = `${Math.max(0, Math.min(100, percent || 0))}%`;
    cancelBtn.hidden = true;
    resumeBtn.hidden = true;
  }

  const isRunning = (j) => j.state === "running" || j.state === "queued";
  // The server goes on with these from the frame they reached (docs/protocol.md, resume).
  const isResumable = (j) => ["interrupted", "cancelled", "failed"].includes(j.state);
  const ids = (js) => js.map((j) => `#${j.object_id}`).join(", ");

  function summarizeJobs() {
    const all = [...jobs.values()];
    const running = all.filter(isRunning);
    const stopped = all.filter(isResumable);
    if (running.length) {
      const j = running[0];
      const eta = j.eta_s == null ? "…" : `${Math.ceil(j.eta_s)} s`;
      const more = running.length > 1 ? ` (+${running.length - 1} waiting)` : "";
      setProgress("running", `Tracking #${j.object_id} ${j.phase}: ${j.percent.toFixed(0)}% · ${j.fps.toFixed(1)} fps · ETA ${eta}${more}`, j.percent);
    } else if (!all.length) setProgress(...clipLine(), 0);
    else if (stopped.length) {
      const j = stopped[0];
      const at = `${j.percent.toFixed(0)}%`;
      const why = { failed: `${j.error || "tracking failed"} (at ${at})`, interrupted: `interrupted at ${at} (the server stopped)`, cancelled: `cancelled at ${at}` }[j.state];
      const others = stopped.length > 1 ? ` (+${stopped.length - 1} more stopped)` : "";
      setProgress(j.state, `#${j.object_id}: ${why}${others}: Resume goes on from there`, j.percent);
    } else setProgress("done", `Tracked ${all.length} object(s) through ${clip.frame_count} frames · 100%`, 100);
    // Cancel stops the one job the bar names; Resume goes on with every stopped one, and each
    // says which.
    if (running.length) {
      cancelBtn.hidden = false;
      cancelBtn.dataset.objectId = String(running[0].object_id);
      cancelBtn.textContent = `Cancel #${running[0].object_id}`;
      cancelBtn.title = `stop tracking #${running[0].object_id}: what it has tracked stays, and Resume goes on from there`;
    }
    if (stopped.length) {
      resumeBtn.hidden = false;
      resumeBtn.textContent = `Resume ${ids(stopped)}`;
      resumeBtn.title = `go on tracking ${ids(stopped)} from the frame ${stopped.length > 1 ? "each" : "it"} reached`;
    }
    updateExports();
  }

  // With no job to show, the bar says what the clip is (nothing before one is open).
  function clipFigures() {
    return clip ? `${clip.frame_count} frames · ${clip.width}x${clip.height} · ${clip.fps.toFixed(2)} fps` : "";
  }

  // A clip with no picture here (a codec browsers cannot play), by its browser copy's state: what
  // the bar, the stage's line (style.css reads #stage's data-no-picture), a click on the stage and
  // (the first sentence) Play's and the scrubber's tooltips say.
  const NO_PICTURE = {
    running: ["No picture yet: a copy of this clip that the browser can play is being made",
      "Find (on the first frame) works already; clicks, Play and the scrubber once the picture shows"],
    failed: ["No picture: the browser cannot play this clip's codec and converting it failed",
      "The server still reads its frames, so Find (on the first frame), tracking, describe, chat and the exports work; a click needs the picture"],
  };
  const noPicture = (state) => NO_PICTURE[state].join(". ");
  // Until the picture has loaded there is no frame on the stage to name, nor to click.
  const LOADING = "the picture is still loading: click, play or scrub once it shows";
  const loading = () => clip && clip.playable && !video.error && video.readyState < HTMLMediaElement.HAVE_METADATA;

  // [state, text] of the bar with no job to show: the clip's figures, and while it has no picture
  // here why not (while a copy is made, only that: one line, no jump when the picture comes).
  function clipLine() {
    if (clip && clip.proxy === "failed") return ["failed", `${clipFigures()} · ${noPicture("failed")}`];
    if (clip && clip.proxy === "running") return ["idle", `${clipFigures()} · ${NO_PICTURE.running[0]}`];
    return ["idle", clipFigures()];
  }

  // How the clip plays: as uploaded, or (a codec browsers cannot play) through the copy the server
  // makes; its state comes with the clip (open, the websocket's hello) and in `proxy` messages
  // (`reason`: why the copy failed).
  function showPlayback(state, reason) {
    clip.proxy = state;
    if (clip.playable || state === "ready") {
      clip.playable = true;
      delete stageEl.dataset.noPicture;
      video.src = clip.video_url;
      playControls(LOADING); // enabled once it has loaded (loadedmetadata)
    } else {
      unloadVideo(); // not the last clip's picture under this one's objects and clicks
      stageEl.dataset.noPicture = noPicture(state);
      playControls(NO_PICTURE[state][0]);
    }
    showFrameLabel(); // "loading" until the picture has loaded
    summarizeJobs(); // with no job under way, the bar says how it plays (clipLine)
    if (reason) shell.showError(reason);
  }

  // Play and the scrubber move the picture: with none (no clip; its browser copy still being made,
  // or failed) Play said "Pause" over a still stage and the scrubber moved to no frame. `why`:
  // their tooltip while disabled (null: enabled).
  function playControls(why) {
    for (const c of [playBtn, scrubber]) {
      c.disabled = !!why;
      if (why) c.title = why;
      else c.removeAttribute("title");
    }
  }

  // An export disabled while it cannot work, with why as its tooltip (as playControls; a click
  // says it too). The server renders no video while tracking runs (409).
  function updateExports() {
    const ready = clip && clip.objects && (clip.objects.length || jobs.size);
    const nothing = ready ? null : "nothing to export yet: click an object in the clip to track it first";
    const tracking = [...jobs.values()].some(isRunning) ? "tracking is still running: export the video when the progress bar says done" : null;
    exportControl(exportJson, "export.json", nothing);
    exportControl(exportVideo, "export.mp4", nothing || tracking);
  }

  function exportControl(a, file, why) {
    a.classList.toggle("disabled", !!why);
    if (why) {
      a.setAttribute("aria-disabled", "true");
      a.title = why;
    } else {
      a.removeAttribute("aria-disabled");
      a.removeAttribute("title");
    }
    if (clip && !why) a.href = `/api/clips/${clip.id}/${file}`; // none to middle-click while disabled
    else a.removeAttribute("href");
  }

  function showFrameLabel() {
    if (!clip) return;
    if (loading()) {
      frameLabel.textContent = "loading the picture…";
      frameLabel.title = LOADING;
      return;
    }
    // The frame shown, and on a line of its own the frame the last click was on.
    const used = lastClickFrame == null ? "" : `\nlast ${lastClickWhat} on frame ${lastClickFrame}`;
    frameLabel.title = lastClickFrame == null ? "" : `your last ${lastClickWhat} was on frame ${lastClickFrame}`;
    frameLabel.textContent = `frame ${currentFrame} / ${clip.frame_count - 1} · ${clip.frame_times[currentFrame].toFixed(2)} s${used}`;
  }

  let presence = {}; // object id -> one character per frame ("1" present, "0" lost, "." not tracked)
  let presenceLoading = null;
  let presenceAgain = false;

  function drawPresence() {
    const ids = store.all().map((o) => o.id).filter((id) => presence[String(id)]);
    const rowH = 4;
    const width = Math.max(1, Math.round(strip.clientWidth || scrubber.clientWidth || 300));
    strip.width = width;
    strip.height = ids.length * rowH;
    strip.style.height = `${ids.length * rowH}px`;
    if (!clip || !ids.length) return;
    const ctx = strip.getContext("2d");
    const n = clip.frame_count;
    ids.forEach((id, row) => {
      const line = presence[String(id)];
      for (let i = 0; i < n; i++) {
        const c = line[i];
        if (c === ".") continue;
        ctx.fillStyle = c === "1" ? css(colorFor(id)) : "#555b66";
        const x0 = Math.floor((i * width) / n);
        const x1 = Math.max(x0 + 1, Math.floor(((i + 1) * width) / n));
        ctx.fillRect(x0, row * rowH, x1 - x0, rowH - 1);
      }
    });
  }

  // Fetch where each object is tracked; one request at a time, and once more if asked meanwhile.
  function refreshPresence() {
    if (!clip) return;
    if (presenceLoading) { presenceAgain = true; return; }
    const id = clip.id;
    presenceLoading = json("GET", `/api/clips/${id}/presence`)
      .then((body) => { if (clip && clip.id === id) { presence = body.objects; drawPresence(); } })
      .catch(() => { /* the strip is a hint; the next progress tries again */ })
      .finally(() => {
        presenceLoading = null;
        if (presenceAgain) { presenceAgain = false; refreshPresence(); }
      });
  }

  async function fetchWindow(start) {
    const count = 32;
    const gen = generation;
    const [into, gens] = [cache, cacheGen]; // this clip's: another may be open when it answers
    const body = await json("GET", `/api/clips/${clip.id}/results?start=${start}&count=${count}`);
    for (let i = body.start; i < body.stop; i++) {
      const per = body.frames[String(i)] || {};
      into.set(i, Object.entries(per).map(([id, res]) => ({ id: Number(id), ...res })));
      gens.set(i, gen);
    }
  }

  async function drawFrame(i) {
    if (!clip || !activeMode) return;
    const shown = clip;
    // Still to draw: neither a newer frame on screen already, nor another clip (or none: gone).
    const wanted = () => clip === shown && i === currentFrame;
    currentFrame = i;
    scrubber.value = String(i);
    showFrameLabel();
    const stale = () => !cache.has(i) || cacheGen.get(i) !== generation;
    if (stale() && fetching) {
      await fetching; // a window is on its way; it may hold this frame, else fetch after it
      if (!wanted()) return;
    }
    if (stale() && !fetching) {
      fetching = fetchWindow(i).catch((e) => { if (clip === shown) shell.showError(e.message); }).finally(() => { fetching = null; });
      await fetching;
    }
    if (!wanted()) return;
    const objs = (cache.get(i) || []).filter((o) => store.has(o.id));
    stage.draw(objs, { width: clip.width, height: clip.height });
  }

  // Redraw on every presented frame while playing (exact media time), and on seeks when paused.
  function onVideoFrame(now, meta) {
    if (clip && activeMode) drawFrame(frameAt(meta.mediaTime));
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onVideoFrame);
  }
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onVideoFrame);
  video.addEventListener("seeked", () => { if (clip) drawFrame(frameAt(video.currentTime)); });
  video.addEventListener("timeupdate", () => {
    if (clip && !video.requestVideoFrameCallback) drawFrame(frameAt(video.currentTime));
  });
  video.addEventListener("play", () => { playBtn.textContent = "Pause"; });
  video.addEventListener("pause", () => { playBtn.textContent = "Play"; });
  video.addEventListener("loadedmetadata", () => {
    if (!clip) return;
    playControls(null);
    showFrameLabel();
    drawFrame(frameAt(video.currentTime));
  });
  video.addEventListener("error", () => {
    if (!clip || !video.getAttribute("src")) return; // unloadVideo's, not a failed load
    frameLabel.textContent = "no picture";
    const why = `the browser could not load this clip's picture (${(video.error && video.error.message) || "media error"}): open it again, or reload the page`;
    playControls(why);
    shell.showError(why);
  });

  playBtn.addEventListener("click", () => { if (video.paused) video.play(); else video.pause(); });
  scrubber.addEventListener("input", () => {
    if (!clip) return;
    video.pause();
    video.currentTime = timeForFrame(Number(scrubber.value));
  });
  // Each stopped job is resumed on its own: one the server refuses (its error shown) leaves the
  // others going on.
  // Each answers for the clip it was sent for: another opened meanwhile has objects of the same ids.
  resumeBtn.addEventListener("click", async () => {
    shell.clearError();
    const shown = clip;
    for (const j of [...jobs.values()].filter(isResumable)) {
      try {
        const body = await json("POST", `/api/clips/${shown.id}/objects/${j.object_id}/resume`);
        if (clip !== shown) return;
        applyJob(body);
      } catch (e) {
        if (clip !== shown) return;
        shell.showError(`#${j.object_id}: ${e.message}`);
      }
    }
  });
  cancelBtn.addEventListener("click", async () => {
    shell.clearError();
    const shown = clip;
    try {
      const body = await json("POST", `/api/clips/${shown.id}/objects/${cancelBtn.dataset.objectId}/cancel`);
      if (clip === shown) applyJob(body);
    } catch (e) {
      if (clip === shown) shell.showError(e.message);
    }
  });
  for (const a of [exportJson, exportVideo]) {
    // Disabled (updateExports): a click says why, instead of downloading the server's refusal.
    a.addEventListener("click", (e) => {
      if (a.getAttribute("aria-disabled") !== "true") return;
      e.preventDefault();
      shell.showError(a.title);
    });
  }

  function onMessage(msg) {
    if (store.apply(msg)) return;
    if (msg.type === "hello") {
      // As the server keeps them: descriptions, verdicts and chat too (as Image's activate).
      store.restore(msg.clip.objects);
      for (const o of msg.clip.objects) if (o.job) jobs.set(o.id, o.job);
      // The browser copy may have become ready, or failed, since the clip was opened.
      if (msg.clip.proxy !== clip.proxy) showPlayback(msg.clip.proxy);
      else summarizeJobs();
      refreshPresence();
    } else if (msg.type === "progress" || msg.type === "job") {
      jobs.set(msg.object_id, msg);
      generation += 1;
      summarizeJobs();
      // Masks fill in as tracking proceeds: the frame on screen is fetched again until this
      // object's result is on it (the clicked frame is tracked first, so its mask shows at once).
      const shown = cache.get(currentFrame);
      if (msg.type === "job" || !shown || !shown.some((o) => o.id === msg.object_id)) drawFrame(currentFrame);
      refreshPresence();
      if (msg.type === "job") library.refreshSoon(); // its state in the list: done, interrupted
    } else if (msg.type === "removed") {
      jobs.delete(msg.object_id);
      summarizeJobs();
      refreshPresence();
    } else if (msg.type === "export") {
      // Rendered: the browser's download takes over, and the bar says the clip's tracking again.
      if (msg.done >= msg.total) summarizeJobs();
      else setProgress("running", `Rendering the overlay video: ${msg.percent.toFixed(0)}% (${msg.done}/${msg.total} frames)`, msg.percent);
    } else if (msg.type === "proxy") {
      showPlayback(msg.state, msg.message);
    } else if (msg.type === "closed") {
      removed(clip.id, msg.message);
    }
  }

  function connect() {
    if (ws) ws.close();
    const id = clip.id;
    const sock = openSocket(`/api/clips/${id}/ws`, {
      onMessage: (msg) => { if (ws === sock) onMessage(msg); }, // not a socket closed since
      onOpen: () => { if (ws === sock) shell.setStatus("connected", `clip: ${clip.filename}`); },
      onClose: (e) => {
        if (ws !== sock) return;
        // 4404: the clip went while this page was not connected (another tab, retention).
        if (e.code === 4404) removed(id, "this clip was removed from the server");
        else shell.setStatus("closed", "clip connection closed");
      },
    });
    ws = sock;
  }

  // The clip shown was removed elsewhere (another tab, retention): the page forgets it as a
  // delete here does, says so, and lists what is left.
  function removed(id, message) {
    forget(id);
    shell.showError(`${message}: upload or open another clip`);
    library.refresh();
  }

  // Closed on purpose: no "connection closed" status (onClose speaks for its own socket only).
  function disconnect() {
    const sock = ws;
    ws = null;
    if (sock) sock.close();
  }

  async function upload(file) {
    shell.clearError();
    const ticket = showing.next();
    setProgress("running", `Uploading ${file.name}…`, 0);
    const form = new FormData();
    form.append("file", file, file.name);
    let r;
    try {
      r = await request("POST", "/api/clips", form);
    } catch (e) {
      if (showing.isNewest(ticket)) setProgress("failed", "Upload refused", 0);
      shell.showError(e.message);
      return;
    }
    load(await r.json(), ticket);
    library.refresh();
  }

  // No picture on the stage: removing src alone keeps the last clip's frame shown (and clickable).
  function unloadVideo() {
    video.removeAttribute("src");
    video.load(); // stops it, if it played
    playBtn.textContent = "Play";
  }

  // Show a clip (just uploaded, or opened from the library with its objects and jobs), the
  // answer to request `ticket` (see showing).
  function load(info, ticket) {
    if (!showing.isNewest(ticket)) return;
    clip = info;
    jobs.clear();
    cache = new Map();
    cacheGen = new Map();
    lastClickFrame = null;
    presence = {};
    drawPresence();
    for (const o of clip.objects) if (o.job) jobs.set(o.id, o.job);
    scrubber.max = String(clip.frame_count - 1);
    scrubber.value = "0";
    currentFrame = 0;
    video.dataset.clipId = clip.id;
    showPlayback(clip.proxy); // and the bar: the jobs, else the clip's figures or its copy's state
    // The object list, the stage and the connection are the shown mode's: an upload that ends
    // while Image or Live is shown leaves theirs alone (coming back to Clip connects, and the
    // hello brings the clip's objects).
    if (!activeMode) return;
    store.clear();
    stage.clear();
    store.restore(clip.objects);
    connect();
  }

  const library = createLibrary(shell, "clip", {
    async open(id) {
      shell.clearError();
      const ticket = showing.next(id);
      load(await json("GET", `/api/clips/${id}`), ticket);
    },
    closed: (id) => forget(id),
  });

  // Clip `id` is gone (deleted here or elsewhere): if shown, nothing of it stays on the page.
  function forget(id) {
    if (!clip || clip.id !== id) return;
    showing.drop(id); // its open, if one is on its way, shows it no more
    disconnect();
    clip = null;
    jobs.clear();
    store.clear();
    stage.clear();
    delete video.dataset.clipId;
    delete stageEl.dataset.noPicture;
    unloadVideo();
    playControls("no clip: upload or open one");
    summarizeJobs(); // no bar, no Cancel or Resume, no exports
    frameLabel.textContent = "no clip";
    frameLabel.removeAttribute("title");
    showNoClip();
  }

  acceptFiles(fileInput, stageEl, { active: () => activeMode, upload });
  // With no picture the shell takes no click (there are no pixels to click on): say why here.
  stageEl.addEventListener("click", () => {
    if (activeMode && clip && !clip.playable && NO_PICTURE[clip.proxy]) shell.showError(noPicture(clip.proxy));
    else if (activeMode && loading()) shell.showError(LOADING);
  });

  // Before a clip is open the status says what to do (once open, the clip's connection speaks).
  function showNoClip() {
    if (activeMode && !clip) shell.setStatus("idle", "no clip: upload or drop one");
  }

  function requireClip() {
    if (!clip) throw new Error("upload a clip first (the Upload clip button)");
  }

  function applyJob(body) {
    if (body.job) jobs.set(body.object_id, body.job);
    summarizeJobs();
  }

  const actions = itemActions({ kind: "clips", current: () => clip, isActive: () => activeMode, require: requireClip, store });
  const { objectUrl, shownNow, onThisItem: onThisClip } = actions;
  // body: {frame} to describe from that frame (a new object's clicked frame), else the last keyframe.
  const describe = actions.describe;
  // Once objects are gone: their jobs, the bar, the strip and the frame without them.
  function forgotten(id) {
    if (id == null) jobs.clear();
    else jobs.delete(id);
    summarizeJobs();
    refreshPresence();
    drawFrame(currentFrame);
  }

  updateExports(); // none before a clip is open, and why

  return {
    activate() {
      activeMode = true;
      shell.capabilities().then((caps) => {
        if (caps.video_suffixes) fileInput.accept = ["video/*", ...caps.video_suffixes].join(",");
      }).catch(() => { /* the shell says the server did not answer */ });
      library.refresh();
      showNoClip();
      if (clip) {
        store.setObjects(clip.objects);
        connect(); // the hello brings the objects and jobs as they are now
        drawFrame(currentFrame);
      }
    },
    deactivate() {
      activeMode = false;
      video.pause();
      // Its events are for Clip's list only; activate() connects again and the hello brings the
      // clip's objects and jobs as they are then.
      disconnect();
    },
    async click(x, y, negative, objectId) {
      requireClip();
      video.pause();
      const shown = shownNow();
      const body = await json("POST", `/api/clips/${clip.id}/clicks`, {
        t: video.currentTime, x, y, negative, object_id: objectId,
      });
      if (!shown()) return;
      lastClickFrame = body.frame;
      lastClickWhat = "click";
      if (objectId == null) {
        store.upsert({ id: body.object_id, label: `object ${body.object_id}`, source: "click" });
        store.select(body.object_id);
      }
      applyJob(body);
      showFrameLabel();
      // A new object is described at once, from the clicked frame (the server's rule).
      if (body.describe) await describe(body.object_id, { frame: body.frame });
    },
    async find(phrase) {
      requireClip();
      video.pause();
      const shown = shownNow();
      const body = await json("POST", `/api/clips/${clip.id}/find`, { t: video.currentTime, phrase, all_candidates: shell.allCandidates() });
      if (!shown()) return;
      for (const o of body.objects) store.upsert({ id: o.object_id, label: o.label, source: "find", find_check: o.check });
      store.apply(body);
      lastClickFrame = body.frame_index;
      lastClickWhat = "Find";
      showFrameLabel();
    },
    describe,
    // On the object's first clicked frame; each VLM click re-tracks the clip as a click does.
    async autoRefine(id, maxSteps) {
      await refining.run(objectUrl(id, "auto_refine"), { max_steps: maxSteps }, onThisClip(store.apply));
    },
    stopRefine: () => refining.stop(),
    // Find all / count on the shown frame: each accepted region is tracked through the clip.
    async findAll(phrase) {
      requireClip();
      video.pause();
      await finding.run(`/api/clips/${clip.id}/find_all`, { t: video.currentTime, phrase }, onThisClip(store.apply));
    },
    stopFind: () => finding.stop(),
    chat: (id, question) => actions.chat(id, question, { t: video.currentTime }),
    reset: () => actions.reset(() => forgotten(null)),
    remove: (id) => actions.remove(id, forgotten),
  };
}
