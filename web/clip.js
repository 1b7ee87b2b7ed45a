// Clip mode: upload a video, click an object on any frame to track it through the whole clip
// (a server job, progress over /api/clips/{id}/ws), play it back with overlays, describe / chat /
// find, and download the JSON and overlay-video exports. A new object is described at once
// from its clicked frame when the server has a VLM (the click's answer says so), as in every mode.
// Its parts are clip_*.js: the frame times, the results per frame, the progress bar and jobs,
// the presence strip, the exports, what it says about a clip's picture, and its websocket
// (reconnected by itself when dropped).
import { json, request } from "./client.js";
import { el } from "./dom.js";
import { acceptFiles } from "./drop.js";
import { createExports } from "./clip_exports.js";
import { frameAt, timeForFrame } from "./clip_frames.js";
import { itemActions, itemStreams, newestRequest } from "./item.js";
import { createJobBar } from "./clip_jobs.js";
import { clipLine, LOADING, NO_PICTURE, noPicture } from "./clip_picture.js";
import { createLibrary } from "./library.js";
import { createPresenceStrip } from "./clip_presence.js";
import { createResultCache } from "./clip_results.js";
import { createClipSocket } from "./clip_socket.js";

export function createClipMode(shell) {
  const { store, stage } = shell;
  const streams = itemStreams(shell, () => activeMode); // web/item.js
  const { refining, finding } = streams;
  // web/index.html belongs to the shell; the mode's stylesheet is linked from here.
  document.head.append(el("link", { rel: "stylesheet", href: "/clip.css" }));

  // --- clip mode ------------------------------------------------------------------------------

  const video = document.querySelector("#clip-video");
  const stageEl = document.querySelector("#stage");
  const tools = document.querySelector("#clip-tools");

  let clip = null; // the server's clip object
  let activeMode = false;
  let currentFrame = 0;
  let results = null; // the shown clip's results per frame (clip_results.js)
  let lastClickFrame = null; // the frame the last click (or Find) was on: its label says so
  let lastClickWhat = "click";
  const showing = newestRequest(); // an upload's or an open's answer shows only if the newest

  // The picker offers every video and, by name, the files the server takes (its capabilities'
  // video_suffixes, from streamer/clip/video_io.py's VIDEO_FORMATS; activate() fills them in).
  const fileInput = el("input", { type: "file", accept: "video/*", "data-testid": "upload-input", id: "clip-file" });
  const fileLabel = el("label", { for: "clip-file", class: "clip-upload" }, "Upload clip");
  const playBtn = el("button", { type: "button", "data-testid": "clip-play", disabled: "" }, "Play");
  const scrubber = el("input", { type: "range", min: "0", max: "0", step: "1", value: "0", "data-testid": "scrubber", "aria-label": "Frame", disabled: "" });
  const frameLabel = el("span", { "data-testid": "frame-label", class: "clip-frame" }, "no clip");
  // The progress bar with the jobs' Cancel and Resume, the exports, and under the scrubber where
  // each object is tracked.
  const jobs = createJobBar({ shell, current: () => clip, idleLine: () => clipLine(clip), onJobs: () => exports.update() });
  // The shown clip's objects: the list's while Clip is shown (a click, a Find, a remove, Clear
  // objects change it), else as the server last said.
  const objectCount = () => (activeMode ? store.all().length : clip ? clip.objects.length : 0);
  const exports = createExports({ shell, current: () => clip, jobs, objectCount });
  store.onObjects(() => { if (activeMode) exports.update(); });
  const presence = createPresenceStrip({ scrubber, current: () => clip, store });
  const scrub = el("div", { class: "clip-scrub" });
  scrub.append(scrubber, presence.element);
  // The job's line and the exports of what it made share a row under the controls: beside them the
  // exports left a 1200 px window's scrubber 154 px wide, 20 frames a pixel on a 2-minute clip.
  const status = el("div", { class: "clip-status" });
  status.append(jobs.element, ...exports.elements);
  tools.append(fileLabel, fileInput, playBtn, scrub, frameLabel, status);

  // Until the picture has loaded there is no frame on the stage to name, nor to click (LOADING).
  const loading = () => clip && clip.playable && !video.error && video.readyState < HTMLMediaElement.HAVE_METADATA;
  // The picture failed to load (an error with this clip's source set, not unloadVideo's).
  const failed = () => clip && clip.playable && video.error && video.getAttribute("src");

  // How the clip plays: as uploaded, or (a codec browsers cannot play) through the copy the server
  // makes; its state comes with the clip (open, the websocket's hello) and in `proxy` messages
  // (`reason`: why the copy failed).
  function showPlayback(state, reason) {
    clip.proxy = state;
    if (clip.playable || state === "ready") {
      clip.playable = true;
      delete stageEl.dataset.noPicture;
      // The clip shown, opened again from the library: its picture stays (loaded again, it went
      // blank and clicks were refused as "loading" meanwhile).
      if (video.getAttribute("src") !== clip.video_url || video.error) {
        video.src = clip.video_url;
        playControls(LOADING); // enabled once it has loaded (loadedmetadata)
      }
    } else {
      unloadVideo(); // not the last clip's picture under this one's objects and clicks
      stageEl.dataset.noPicture = noPicture(state);
      playControls(NO_PICTURE[state][0]);
    }
    showFrameLabel(); // "loading" until the picture has loaded
    jobs.summarize(); // with no job under way, the bar says how it plays (clipLine)
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

  function showFrameLabel() {
    if (!clip) return;
    if (failed()) {
      // Whatever redraws later (the websocket's hello, a job's progress): no frame to name.
      frameLabel.textContent = "no picture";
      frameLabel.title = "";
      return;
    }
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

  async function drawFrame(i) {
    if (!clip || !activeMode) return;
    const shown = clip;
    const kept = results;
    // Still to draw: neither a newer frame on screen already, nor another clip (or none: gone),
    // nor another mode (the stage and the list are Image's or Live's now).
    const wanted = () => activeMode && clip === shown && i === currentFrame;
    currentFrame = i;
    scrubber.value = String(i);
    showFrameLabel();
    try {
      await kept.load(i, wanted);
    } catch (e) {
      if (activeMode && clip === shown) shell.showError(e.message);
    }
    if (!wanted()) return;
    const objs = (kept.get(i) || []).filter((o) => store.has(o.id));
    stage.draw(objs, { width: clip.width, height: clip.height });
  }

  // Redraw on every presented frame while playing (exact media time), and on seeks when paused.
  function onVideoFrame(now, meta) {
    if (clip && activeMode) drawFrame(frameAt(clip, meta.mediaTime));
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onVideoFrame);
  }
  if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(onVideoFrame);
  video.addEventListener("seeked", () => { if (clip) drawFrame(frameAt(clip, video.currentTime)); });
  video.addEventListener("timeupdate", () => {
    if (clip && !video.requestVideoFrameCallback) drawFrame(frameAt(clip, video.currentTime));
  });
  video.addEventListener("play", () => { playBtn.textContent = "Pause"; });
  video.addEventListener("pause", () => { playBtn.textContent = "Play"; });
  video.addEventListener("loadedmetadata", () => {
    if (!clip) return;
    playControls(null);
    showFrameLabel();
    drawFrame(frameAt(clip, video.currentTime));
  });
  video.addEventListener("error", () => {
    if (!failed()) return; // unloadVideo's, not a failed load
    showFrameLabel();
    const why = `the browser could not load this clip's picture (${(video.error && video.error.message) || "media error"}): open it again, or reload the page`;
    playControls(why);
    shell.showError(why);
  });

  playBtn.addEventListener("click", () => { if (video.paused) video.play(); else video.pause(); });
  scrubber.addEventListener("input", () => {
    if (!clip) return;
    video.pause();
    video.currentTime = timeForFrame(clip, Number(scrubber.value));
  });
  function onMessage(msg) {
    // Every tab open on the clip hears of an object one of them clicked (`added`): the tab that
    // clicked selects it from its click's answer; the others keep their own selection.
    if (msg.type === "objects") msg = { ...msg, added: null };
    if (store.apply(msg)) return;
    if (msg.type === "hello") {
      // The clip as the server has it now, on every connection: opened, come back to, or
      // reconnected (the server may have restarted meanwhile: a job it ran is interrupted, and
      // results it had not committed are gone). Objects as the server keeps them: descriptions,
      // verdicts and chat too (as Image's activate).
      clip.objects = msg.clip.objects;
      store.restore(clip.objects);
      jobs.setAll(clip.objects);
      results.changed();
      // The browser copy may have become ready, or failed, since the clip was opened.
      if (msg.clip.proxy !== clip.proxy) showPlayback(msg.clip.proxy);
      else jobs.summarize();
      presence.refresh();
      drawFrame(currentFrame);
    } else if (msg.type === "progress" || msg.type === "job") {
      jobs.set(msg.object_id, msg);
      results.changed();
      jobs.summarize();
      // Masks fill in as tracking proceeds: the frame on screen is fetched again until this
      // object's result is on it (the clicked frame is tracked first, so its mask shows at once).
      const shown = results.get(currentFrame);
      if (msg.type === "job" || !shown || !shown.some((o) => o.id === msg.object_id)) drawFrame(currentFrame);
      presence.refresh();
      if (msg.type === "job") library.refreshSoon(); // its state in the list: done, interrupted
    } else if (msg.type === "removed") {
      jobs.forget(msg.object_id);
      jobs.summarize();
      presence.refresh();
    } else if (msg.type === "export") {
      // Rendered: the browser's download takes over, and the bar says the clip's tracking again.
      if (msg.done >= msg.total) jobs.summarize();
      else if (msg.waiting) jobs.setProgress("running", "Rendering the overlay video: waiting for other renders to finish", 0);
      else jobs.setProgress("running", `Rendering the overlay video: ${msg.percent.toFixed(0)}% (${msg.done}/${msg.total} frames)`, msg.percent);
    } else if (msg.type === "proxy") {
      showPlayback(msg.state, msg.message);
    } else if (msg.type === "closed") {
      removed(clip.id, msg.message);
    }
  }

  // The shown clip's socket (web/clip_socket.js): reconnects by itself when dropped.
  const socket = createClipSocket({ shell, onMessage, gone: (id) => removed(id, "this clip was removed from the server") });
  const connect = () => socket.open(clip);

  // The clip shown was removed elsewhere (another tab, retention): the page forgets it as a
  // delete here does, says so, and lists what is left. The server says so of a delete made here
  // too, often before the DELETE answers: that one is the person's own doing, not news.
  function removed(id, message) {
    forget(id);
    if (library.deleting(id)) return; // the library's delete goes on: it lists what is left
    shell.showError(`${message}: upload or open another clip`);
    library.refresh();
  }

  // Closed on purpose: no status, and no reconnect.
  const disconnect = () => socket.close();

  async function upload(file) {
    shell.clearError();
    const ticket = showing.next();
    jobs.setProgress("running", `Uploading ${file.name}…`, 0);
    const form = new FormData();
    form.append("file", file, file.name);
    let r;
    try {
      r = await request("POST", "/api/clips", form);
    } catch (e) {
      if (showing.isNewest(ticket)) jobs.setProgress("failed", "Upload refused", 0);
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
    if (clip && clip.id !== info.id) streams.stop(true);
    const again = clip != null && clip.id === info.id; // its picture, and the frame shown, stay
    clip = info;
    jobs.setAll(clip.objects);
    results = createResultCache(clip.id);
    lastClickFrame = null;
    presence.clear();
    scrubber.max = String(clip.frame_count - 1);
    if (!again) {
      scrubber.value = "0";
      currentFrame = 0;
    }
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
    showing.drop(id); // its open, if one is on its way, shows it no more
    if (!clip || clip.id !== id) return;
    streams.stop(true);
    disconnect();
    clip = null;
    jobs.forget(null);
    // Nothing of it under the scrubber, and the scrubber at rest (as load() starts a clip).
    presence.clear();
    scrubber.max = "0";
    scrubber.value = "0";
    currentFrame = 0;
    lastClickFrame = null;
    if (activeMode) {
      // The list and the stage are the shown mode's: left alone while Image or Live is shown.
      store.clear();
      stage.clear();
    }
    delete video.dataset.clipId;
    delete stageEl.dataset.noPicture;
    unloadVideo();
    playControls("no clip: upload or open one");
    jobs.summarize(); // no bar, no Cancel or Resume, no exports
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

  const actions = itemActions({ kind: "clips", current: () => clip, isActive: () => activeMode, require: requireClip, store });
  const { objectUrl, onThisItem: onThisClip } = actions;
  // body: {frame} to describe from that frame (a new object's clicked frame), else the last keyframe.
  const describe = actions.describe;
  // Once objects are gone: their jobs, the bar, the strip and the frame without them.
  function forgotten(id) {
    jobs.forget(id);
    jobs.summarize();
    presence.refresh();
    drawFrame(currentFrame);
  }

  exports.update(); // none before a clip is open, and why

  return {
    activate() {
      activeMode = true;
      shell.capabilities().then((caps) => {
        if (caps.video_suffixes) fileInput.accept = ["video/*", ...caps.video_suffixes].join(",");
      }).catch(() => { /* the shell says the server did not answer */ });
      library.refresh();
      showNoClip();
      if (clip) {
        connect(); // the hello brings the objects and jobs as they are now (the shell lists them as left till then)
        drawFrame(currentFrame);
      }
    },
    shownItem: () => (clip ? clip.id : null),
    deactivate() {
      activeMode = false;
      streams.stop(false); // the shell tells agent.js
      video.pause();
      // Its events are for Clip's list only; activate() connects again and the hello brings the
      // clip's objects and jobs as they are then.
      disconnect();
    },
    async click(x, y, negative, objectId) {
      requireClip();
      video.pause();
      // The server speaks the decoded frame's pixels: a clip of non-square pixels (anamorphic)
      // plays wider or narrower than its frames, and the browser's videoWidth is the shown one.
      const at = stage.toFrame(x, y, { width: clip.width, height: clip.height });
      const body = await actions.clickAnswer(json("POST", `/api/clips/${clip.id}/clicks`, {
        t: video.currentTime, ...at, negative, object_id: objectId,
      }), objectId, (made) => made.object_id);
      if (!body) return;
      lastClickFrame = body.frame;
      lastClickWhat = "click";
      if (objectId == null) {
        store.upsert({ id: body.object_id, label: body.label, source: "click" });
        store.select(body.object_id);
      }
      jobs.apply(body);
      showFrameLabel();
      // A new object is described at once, from the clicked frame (the server's rule).
      if (body.describe) await describe(body.object_id, { frame: body.frame });
    },
    async find(phrase) {
      requireClip();
      video.pause();
      await actions.find({ t: video.currentTime, phrase, all_candidates: shell.allCandidates() }, (body) => {
        for (const o of body.objects) store.upsert({ id: o.object_id, label: o.label, source: "find", find_check: o.check });
        store.apply(body);
        if (!body.objects.length) return; // nothing started there: the label names no frame for it
        lastClickFrame = body.frame_index;
        lastClickWhat = "Find";
        showFrameLabel();
      });
    },
    describe,
    // On the object's first clicked frame; each VLM click re-tracks the clip as a click does.
    async autoRefine(id, maxSteps) {
      // Its clicks are placed on that frame: the picture goes there with each, so the dots
      // drawn mark what they were placed on (they sat over whatever frame was showing).
      const onEvent = (ev) => {
        if (ev.type === "refine_click" && ev.frame_index != null && ev.frame_index !== currentFrame) {
          video.pause();
          video.currentTime = timeForFrame(clip, ev.frame_index);
        }
        store.apply(ev);
      };
      await refining.run(objectUrl(id, "auto_refine"), { max_steps: maxSteps }, onThisClip(onEvent));
    },
    stopRefine: (id) => actions.stopRefine(id, refining),
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
