// The page shell shared by every mode (Live / Clip / Image): tabs, stage coordinates, overlay
// drawing, the object list, the answer panel, errors and status.
//
// Contract for mode scripts (web/live.js, web/clip.js, web/image.js):
//
//   FMU.registerMode(name, controller)
//       controller = {activate(), deactivate(), click(x, y, negative, selectedObjectId|null),
//                     find(phrase), describe(objectId), chat(objectId, question), remove(objectId)}
//       Tab switching shows the [data-for=name] elements, hides the others, and calls
//       deactivate() on the old mode and activate() on the new one. The shell calls click() when
//       the person clicks the stage (x, y in the active media's own pixels; negative when
//       shift-clicked or the "negative" toggle is on; selectedObjectId is the object to refine -
//       the selected object when the click lands on it or is negative - else null for a new one),
//       find() from the Find box, chat() from the chat box, describe()/remove() from the list.
//   FMU.stageCoords(event) -> {x, y}   event position in the active media's pixels (object-fit aware)
//   FMU.mediaSize() -> {width, height} the active media's own pixel size (0 x 0 before it has any)
//   FMU.drawOverlay(objects, frameSize) objects [{id, rle, box, score, present}], frameSize
//                                       {width, height}: masks drawn over the active media
//   FMU.clearOverlay()
//   FMU.decodeRLE(rle) -> Uint8Array   COCO RLE {size: [h, w], counts} to row-major h*w, 1 = object
//   FMU.setObjects([{id, label}])      renders the object list (colours, select, describe, remove)
//   FMU.selectedObject() -> id|null    FMU.selectObject(id|null)
//   FMU.answer.reset(objectId)         starts a fresh description for that object (verdict pending)
//   FMU.answer.append(text[, objectId])        description text (defaults to the last reset object)
//   FMU.answer.setVerdict(verdict, iou, attempts[, objectId])   "verified" | "unverified"
//   FMU.answer.setPending([objectId])
//   FMU.answer.chat(role, text[, objectId])    a chat line ("user" | "assistant"); text of an
//                                              assistant line streams: call again to append
//   FMU.answer.note(text|null)         a standing note in the panel (e.g. why descriptions are off)
//   FMU.showError(message) / FMU.clearError()
//   FMU.setStatus(state, text)         state: idle | connecting | connected | closed | error
//   FMU.colorFor(id) -> [r, g, b]      the object's colour everywhere on the page
//   FMU.activeMode() -> name
"use strict";

(function () {
  const $ = (sel) => document.querySelector(sel);
  const stage = $("#stage");
  const overlay = $("#overlay");
  const objectsList = $("#objects");
  const answerEl = $("#answer");
  const verdictEl = $("#verdict");
  const errorEl = $("#error");
  const statusEl = $("#status");

  const modes = new Map();
  let active = null;
  let objects = [];
  let selected = null;
  let lastOverlay = null; // {objects, frameSize, masks: Map(id -> Uint8Array)}
  const answers = new Map(); // objectId -> {text, verdict, iou, attempts, chat: [{role, text}]}
  let answerTarget = null;
  let negativeToggle = false;

  // Fixed, well-separated colours; ids beyond the palette reuse it.
  const PALETTE = [
    [255, 64, 64], [64, 160, 255], [64, 220, 96], [255, 200, 0], [200, 80, 255],
    [0, 220, 220], [255, 128, 0], [255, 96, 200], [160, 255, 64], [128, 128, 255],
  ];
  function colorFor(id) {
    return PALETTE[Math.abs(Number(id) || 0) % PALETTE.length];
  }
  const css = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

  // --- media geometry -------------------------------------------------------------------

  function activeMedia() {
    if (!active) return null;
    return stage.querySelector(`[data-for="${active}"]:not(#overlay)`);
  }

  function mediaSize() {
    const el = activeMedia();
    if (!el) return { width: 0, height: 0 };
    if (el.tagName === "VIDEO") return { width: el.videoWidth, height: el.videoHeight };
    return { width: el.width, height: el.height };
  }

  // Where the media's pixels are inside the element's box, as object-fit: contain lays them out.
  function contentRect(el, size) {
    const r = el.getBoundingClientRect();
    if (!size.width || !size.height) return { left: r.left, top: r.top, width: r.width, height: r.height };
    const scale = Math.min(r.width / size.width, r.height / size.height);
    const w = size.width * scale;
    const h = size.height * scale;
    return { left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, width: w, height: h };
  }

  function stageCoords(event) {
    const el = activeMedia();
    const size = mediaSize();
    if (!el || !size.width) return { x: NaN, y: NaN };
    const c = contentRect(el, size);
    return {
      x: ((event.clientX - c.left) / c.width) * size.width,
      y: ((event.clientY - c.top) / c.height) * size.height,
    };
  }

  // --- masks and overlay ----------------------------------------------------------------

  function decodeCounts(s) {
    // COCO's compressed counts: 5-bit groups with a continuation bit, offset by 48; from the
    // third count on each is a delta against the count two before (workers/masks.py).
    const counts = [];
    let p = 0;
    while (p < s.length) {
      let x = 0;
      let k = 0;
      let more = true;
      while (more) {
        const c = s.charCodeAt(p) - 48;
        x |= (c & 0x1f) << (5 * k);
        more = (c & 0x20) !== 0;
        p += 1;
        k += 1;
        if (!more && (c & 0x10)) x |= -1 << (5 * k);
      }
      if (counts.length > 2) x += counts[counts.length - 2];
      counts.push(x);
    }
    return counts;
  }

  function decodeRLE(rle) {
    const h = rle.size[0];
    const w = rle.size[1];
    const counts = typeof rle.counts === "string" ? decodeCounts(rle.counts) : rle.counts;
    const out = new Uint8Array(h * w);
    let pos = 0; // column-major position
    for (let i = 0; i < counts.length; i++) {
      const n = counts[i];
      if (i % 2 === 1) {
        for (let j = pos; j < pos + n; j++) {
          const col = (j / h) | 0;
          const row = j - col * h;
          out[row * w + col] = 1;
        }
      }
      pos += n;
    }
    return out;
  }

  const maskCanvas = document.createElement("canvas");

  function fitOverlay() {
    const w = stage.clientWidth;
    const h = stage.clientHeight;
    if (overlay.width !== w || overlay.height !== h) {
      overlay.width = w;
      overlay.height = h;
    }
  }

  function clearOverlay() {
    fitOverlay();
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    lastOverlay = null;
  }

  function drawOverlay(objs, frameSize) {
    fitOverlay();
    const ctx = overlay.getContext("2d");
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const fw = frameSize.width;
    const fh = frameSize.height;
    const masks = new Map();
    if (!fw || !fh) return;
    maskCanvas.width = fw;
    maskCanvas.height = fh;
    const mctx = maskCanvas.getContext("2d");
    const img = mctx.createImageData(fw, fh);
    const data = img.data;
    for (const o of objs) {
      if (!o.rle) continue;
      const m = decodeRLE(o.rle);
      masks.set(o.id, m);
      if (o.present === false) continue;
      const c = colorFor(o.id);
      const alpha = o.id === selected ? 150 : 110;
      for (let i = 0; i < m.length; i++) {
        if (m[i]) {
          const k = i * 4;
          data[k] = c[0];
          data[k + 1] = c[1];
          data[k + 2] = c[2];
          data[k + 3] = alpha;
        }
      }
    }
    mctx.putImageData(img, 0, 0);
    // The overlay covers the stage; the media sits inside it letterboxed (object-fit: contain).
    const el = activeMedia();
    const s = stage.getBoundingClientRect();
    const c = el ? contentRect(el, mediaSize().width ? mediaSize() : frameSize)
      : { left: s.left, top: s.top, width: s.width, height: s.height };
    const dx = c.left - s.left;
    const dy = c.top - s.top;
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(maskCanvas, dx, dy, c.width, c.height);
    for (const o of objs) {
      if (!o.box || o.present === false) continue;
      const sx = c.width / fw;
      const sy = c.height / fh;
      ctx.strokeStyle = css(colorFor(o.id));
      ctx.lineWidth = o.id === selected ? 3 : 1.5;
      ctx.strokeRect(dx + o.box[0] * sx, dy + o.box[1] * sy, (o.box[2] - o.box[0]) * sx,
        (o.box[3] - o.box[1]) * sy);
    }
    lastOverlay = { objects: objs, frameSize, masks };
  }

  // Is media point (x, y) on object id's newest mask? (a click there refines it)
  function onObject(id, x, y) {
    if (!lastOverlay || id == null) return false;
    const m = lastOverlay.masks.get(id);
    const size = mediaSize();
    const fs = lastOverlay.frameSize;
    if (!m || !size.width) return false;
    const fx = Math.floor((x * fs.width) / size.width);
    const fy = Math.floor((y * fs.height) / size.height);
    if (fx < 0 || fy < 0 || fx >= fs.width || fy >= fs.height) return false;
    return m[fy * fs.width + fx] === 1;
  }

  // --- object list ----------------------------------------------------------------------

  function setObjects(list) {
    objects = list.map((o) => ({ id: o.id, label: o.label || `object ${o.id}` }));
    if (selected != null && !objects.some((o) => o.id === selected)) selected = null;
    for (const id of [...answers.keys()]) {
      if (!objects.some((o) => o.id === id)) answers.delete(id);
    }
    renderObjects();
    renderAnswer();
  }

  function renderObjects() {
    objectsList.replaceChildren();
    for (const o of objects) {
      const li = document.createElement("li");
      li.dataset.testid = "object-item";
      li.setAttribute("data-testid", "object-item");
      li.dataset.objectId = String(o.id);
      li.classList.toggle("selected", o.id === selected);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = css(colorFor(o.id));
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = `#${o.id} ${o.label}`;
      const describe = document.createElement("button");
      describe.type = "button";
      describe.textContent = "Describe";
      describe.setAttribute("data-testid", "object-describe");
      describe.addEventListener("click", (e) => {
        e.stopPropagation();
        selectObject(o.id);
        call("describe", o.id);
      });
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.setAttribute("data-testid", "object-remove");
      remove.addEventListener("click", (e) => {
        e.stopPropagation();
        call("remove", o.id);
      });
      li.append(swatch, label, describe, remove);
      li.addEventListener("click", () => selectObject(o.id === selected ? null : o.id));
      objectsList.append(li);
    }
  }

  function selectObject(id) {
    selected = id;
    if (id != null) answerTarget = id;
    renderObjects();
    renderAnswer();
    if (lastOverlay) drawOverlay(lastOverlay.objects, lastOverlay.frameSize);
  }

  // --- answer panel ---------------------------------------------------------------------

  function entry(id) {
    const key = id == null ? answerTarget : id;
    if (key == null) return null;
    if (!answers.has(key)) answers.set(key, { text: "", verdict: "pending", iou: null, attempts: 0, chat: [] });
    return answers.get(key);
  }

  function shown() {
    const id = selected != null ? selected : answerTarget;
    return id == null ? null : answers.get(id) || null;
  }

  let standingNote = null;

  function renderAnswer() {
    const a = shown();
    answerEl.replaceChildren();
    if (standingNote) {
      const p = document.createElement("p");
      p.className = "note";
      p.setAttribute("data-testid", "answer-note");
      p.textContent = standingNote;
      answerEl.append(p);
    }
    if (!a) {
      verdictEl.dataset.verdict = "pending";
      verdictEl.textContent = "";
      return;
    }
    const d = document.createElement("p");
    d.className = "description";
    d.textContent = a.text;
    answerEl.append(d);
    for (const turn of a.chat) {
      const p = document.createElement("p");
      p.className = `chat ${turn.role}`;
      p.textContent = (turn.role === "user" ? "Q: " : "A: ") + turn.text;
      answerEl.append(p);
    }
    verdictEl.dataset.verdict = a.verdict;
    if (a.verdict === "pending") {
      verdictEl.textContent = a.text ? "checking…" : "";
    } else {
      const iou = a.iou == null ? "n/a" : Number(a.iou).toFixed(2);
      const tries = a.attempts === 1 ? "1 attempt" : `${a.attempts} attempts`;
      verdictEl.textContent = `${a.verdict} · IoU ${iou} (${tries})`;
    }
  }

  const answer = {
    reset(objectId) {
      answerTarget = objectId;
      const old = answers.get(objectId);
      answers.set(objectId, { text: "", verdict: "pending", iou: null, attempts: 0, chat: old ? old.chat : [] });
      renderAnswer();
    },
    append(text, objectId) {
      const a = entry(objectId);
      if (!a) return;
      a.text += text;
      renderAnswer();
    },
    setVerdict(verdict, iou, attempts, objectId) {
      const a = entry(objectId);
      if (!a) return;
      a.verdict = verdict;
      a.iou = iou;
      a.attempts = attempts;
      renderAnswer();
    },
    setPending(objectId) {
      const a = entry(objectId);
      if (!a) return;
      a.verdict = "pending";
      renderAnswer();
    },
    // Replace the description text outright (e.g. a retry starts over, or the kept attempt).
    setText(text, objectId) {
      const a = entry(objectId);
      if (!a) return;
      a.text = text;
      renderAnswer();
    },
    chat(role, text, objectId) {
      const a = entry(objectId);
      if (!a) return;
      const last = a.chat[a.chat.length - 1];
      if (role === "assistant" && last && last.role === "assistant" && !last.done) last.text += text;
      else a.chat.push({ role, text, done: role === "user" });
      if (a.chat.length > 40) a.chat.splice(0, a.chat.length - 40);
      renderAnswer();
    },
    chatDone(objectId) {
      const a = entry(objectId);
      const last = a && a.chat[a.chat.length - 1];
      if (last) last.done = true;
    },
    note(text) {
      standingNote = text || null;
      renderAnswer();
    },
  };

  // --- errors and status ----------------------------------------------------------------

  function showError(message) {
    errorEl.textContent = message;
    errorEl.hidden = false;
  }
  function clearError() {
    errorEl.textContent = "";
    errorEl.hidden = true;
  }
  function setStatus(state, text) {
    statusEl.dataset.state = state;
    statusEl.textContent = text || state;
  }

  // --- modes ----------------------------------------------------------------------------

  function registerMode(name, controller) {
    modes.set(name, controller);
    if (active === name && controller.activate) controller.activate();
  }

  function call(method, ...args) {
    const c = modes.get(active);
    if (!c || typeof c[method] !== "function") {
      showError(`${active} mode cannot ${method} yet`);
      return;
    }
    try {
      const r = c[method](...args);
      if (r && typeof r.catch === "function") r.catch((e) => showError(String(e && e.message || e)));
    } catch (e) {
      showError(String(e && e.message || e));
    }
  }

  function switchMode(name) {
    if (name === active) return;
    const old = modes.get(active);
    if (old && old.deactivate) {
      try { old.deactivate(); } catch (e) { console.error(e); }
    }
    active = name;
    for (const tab of document.querySelectorAll("[data-mode]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.mode === name));
    }
    for (const el of document.querySelectorAll("[data-for]")) {
      el.hidden = el.dataset.for !== name;
    }
    objects = [];
    selected = null;
    answerTarget = null;
    answers.clear();
    standingNote = null;
    renderObjects();
    renderAnswer();
    clearOverlay();
    clearError();
    setStatus("idle", "idle");
    const c = modes.get(name);
    if (c && c.activate) {
      try { c.activate(); } catch (e) { showError(String(e && e.message || e)); }
    }
  }

  // --- wiring ---------------------------------------------------------------------------

  stage.addEventListener("click", (event) => {
    const { x, y } = stageCoords(event);
    const size = mediaSize();
    if (!size.width || !(x >= 0 && y >= 0 && x < size.width && y < size.height)) return;
    const negative = event.shiftKey || negativeToggle;
    let target = null;
    if (selected != null && (negative || onObject(selected, x, y))) target = selected;
    if (negative && target == null) {
      showError("select an object first: a negative click removes a region from the selected object");
      return;
    }
    call("click", x, y, negative, target);
  });

  $("#find-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#find-input");
    const phrase = input.value.replace(/^\s*find:\s*/i, "").trim();
    if (!phrase) return;
    call("find", phrase);
  });

  $("#chat-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = $("#chat-input");
    const q = input.value.trim();
    if (!q) return;
    const id = selected != null ? selected : answerTarget;
    if (id == null) {
      showError("select an object in the list (or click one) before asking about it");
      return;
    }
    input.value = "";
    call("chat", id, q);
  });

  const negToggle = $("#negative-toggle");
  if (negToggle) {
    negToggle.addEventListener("change", () => { negativeToggle = negToggle.checked; });
  }

  for (const tab of document.querySelectorAll("[data-mode]")) {
    tab.addEventListener("click", () => switchMode(tab.dataset.mode));
  }

  window.addEventListener("resize", () => {
    if (lastOverlay) drawOverlay(lastOverlay.objects, lastOverlay.frameSize);
  });

  window.FMU = {
    registerMode,
    stageCoords,
    mediaSize,
    drawOverlay,
    clearOverlay,
    decodeRLE,
    setObjects,
    selectedObject: () => selected,
    selectObject,
    answer,
    showError,
    clearError,
    setStatus,
    colorFor,
    activeMode: () => active,
  };

  // Start in the tab the page marks as selected, once every mode script has registered.
  window.addEventListener("DOMContentLoaded", () => {
    const first = document.querySelector('[data-mode][aria-selected="true"]') || document.querySelector("[data-mode]");
    if (first) switchMode(first.dataset.mode);
  });
})();
