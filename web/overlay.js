// The stage: where the active media's pixels are on the page, and the overlay drawn over them
// (masks from COCO RLE, boxes). Every mode draws through here.

// Fixed, well-separated colours; ids beyond the palette reuse it (streamer/clip/exports.py too).
const PALETTE = [
  [255, 64, 64], [64, 160, 255], [64, 220, 96], [255, 200, 0], [200, 80, 255],
  [0, 220, 220], [255, 128, 0], [255, 96, 200], [160, 255, 64], [128, 128, 255],
];

export function colorFor(id) {
  return PALETTE[Math.abs(Number(id) || 0) % PALETTE.length];
}

export const css = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

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

// COCO RLE {size: [h, w], counts} to a row-major Uint8Array, 1 = object: at the mask's own size,
// or at width x height, each pixel the nearest one of the mask's (workers/masks.py's
// resize_nearest), without ever holding the mask at its own size (a photo's is tens of MB).
export function decodeRLE(rle, width = rle.size[1], height = rle.size[0]) {
  const h = rle.size[0];
  const w = rle.size[1];
  const counts = typeof rle.counts === "string" ? decodeCounts(rle.counts) : rle.counts;
  const out = new Uint8Array(width * height);
  const cols = firstShown(w, width);
  const rows = firstShown(h, height);
  let pos = 0; // column-major position
  for (let i = 0; i < counts.length; i++) {
    const end = pos + counts[i];
    if (i % 2 === 1) {
      // A run of ones, column by column: each column's rows, at every pixel that shows them.
      for (let j = pos; j < end;) {
        const col = (j / h) | 0;
        const r0 = j - col * h;
        const r1 = Math.min(h, r0 + end - j);
        for (let y = rows[r0]; y < rows[r1]; y++) out.fill(1, y * width + cols[col], y * width + cols[col + 1]);
        j += r1 - r0;
      }
    }
    pos = end;
  }
  return out;
}

// Source index k (of n) shows at target indices [s[k], s[k + 1]) of m: the first target index
// whose nearest source index is k or more, for every k and n.
function firstShown(n, m) {
  const s = new Int32Array(n + 1).fill(m);
  for (let t = m - 1; t >= 0; t--) s[Math.floor(((t + 0.5) * n) / m)] = t;
  for (let k = n - 1; k >= 0; k--) s[k] = Math.min(s[k], s[k + 1]);
  return s;
}

// A row-major mask's runs of ones along its rows, as [start, end) pixel index pairs: painting a
// mask then costs a fill per run, not a test per pixel.
function rowRuns(mask, width) {
  const runs = [];
  for (let i = mask.indexOf(1); i >= 0; i = mask.indexOf(1, i)) {
    const rowEnd = (Math.floor(i / width) + 1) * width;
    const zero = mask.indexOf(0, i);
    const end = zero < 0 || zero > rowEnd ? rowEnd : zero;
    runs.push(i, end);
    i = end;
  }
  return Int32Array.from(runs);
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

// stage: the element holding every mode's media ([data-for=mode]) and the overlay canvas;
// activeMode() names the mode shown; selected() the selected object id (drawn stronger);
// onAbsent(ids): the objects the picture drawn now does not show (present false: drawn without
// mask or box), so the list can say why theirs vanished.
export function createStage(stage, overlay, activeMode, selected, onAbsent = () => {}) {
  const maskCanvas = document.createElement("canvas");
  // Each object's mask as drawn (decoded once per mask, not per redraw): id -> {rle, width,
  // height, mask, runs}; and what maskCanvas holds now, so a redraw that changes none of it (a
  // resize, a new box) only scales it onto the overlay.
  const rasters = new Map();
  let painted = null; // {width, height, chosen, layers: [{id, mask, shown}]}
  let last = null; // {objects, frameSize}

  function activeMedia() {
    const mode = activeMode();
    return mode ? stage.querySelector(`[data-for="${mode}"]:not(#overlay)`) : null;
  }

  // The active media's own pixel size (0 x 0 before it has any).
  function mediaSize() {
    const el = activeMedia();
    if (!el) return { width: 0, height: 0 };
    if (el.tagName === "VIDEO") return { width: el.videoWidth, height: el.videoHeight };
    return { width: el.width, height: el.height };
  }

  // An event's position in the active media's pixels (object-fit aware).
  function coords(event) {
    const el = activeMedia();
    const size = mediaSize();
    if (!el || !size.width) return { x: NaN, y: NaN };
    const c = contentRect(el, size);
    return {
      x: ((event.clientX - c.left) / c.width) * size.width,
      y: ((event.clientY - c.top) / c.height) * size.height,
    };
  }

  // A media point in the pixels of a frame of frameSize {width, height} (the server's frame, or
  // image, that the media shows scaled); each axis by its own ratio. (Back: stagePoint.)
  function toFrame(x, y, frameSize) {
    const m = mediaSize();
    if (!m.width || !frameSize.width) return { x, y };
    return { x: (x * frameSize.width) / m.width, y: (y * frameSize.height) / m.height };
  }

  // A point of the frame last drawn -> [left, top] inside the stage, in CSS pixels (auto-refine's
  // dots): the media sits letterboxed in the stage, and the frame may be another size than the
  // media (a photo's working copy, Live's sent frames, a clip of non-square pixels). Null while
  // the media has no size.
  function stagePoint(x, y) {
    const el = activeMedia();
    const size = mediaSize();
    if (!el || !size.width) return null;
    const frame = last && last.frameSize.width ? last.frameSize : size;
    const c = contentRect(el, size);
    const s = stage.getBoundingClientRect();
    return [c.left - s.left + (x / frame.width) * c.width, c.top - s.top + (y / frame.height) * c.height];
  }

  // The overlay's pixels are the screen's: on a HiDPI screen (devicePixelRatio 2) a mask at the
  // frame's resolution and the box outlines keep their detail instead of being scaled up from a
  // canvas at CSS pixels. Drawing is in CSS pixels (the scale is the context's transform).
  function fit() {
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(stage.clientWidth * dpr);
    const h = Math.round(stage.clientHeight * dpr);
    if (overlay.width !== w || overlay.height !== h) {
      overlay.width = w;
      overlay.height = h;
    }
    const ctx = overlay.getContext("2d");
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.clearRect(0, 0, w, h);
    if (stage.clientWidth && stage.clientHeight) {
      ctx.setTransform(w / stage.clientWidth, 0, 0, h / stage.clientHeight, 0, 0);
    }
    return ctx;
  }

  function clear() {
    fit();
    rasters.clear();
    painted = null;
    last = null;
    onAbsent([]);
  }

  // Masks are drawn at the frame's size or, where the media is smaller (Image mode shows a
  // photo's working copy), at the media's: nothing finer reaches the screen.
  function rasterSize(frameSize) {
    const m = mediaSize();
    const smaller = m.width && m.width * m.height < frameSize.width * frameSize.height;
    return smaller ? { width: m.width, height: m.height } : { width: frameSize.width, height: frameSize.height };
  }

  function raster(o, width, height) {
    const kept = rasters.get(o.id);
    const same = kept && kept.width === width && kept.height === height && (kept.rle === o.rle
      || (typeof o.rle.counts === "string" && kept.rle.counts === o.rle.counts
        && kept.rle.size[0] === o.rle.size[0] && kept.rle.size[1] === o.rle.size[1]));
    if (same) return kept.mask;
    const mask = decodeRLE(o.rle, width, height);
    rasters.set(o.id, { rle: o.rle, width, height, mask, runs: rowRuns(mask, width) });
    return mask;
  }

  // Every shown mask in its colour on maskCanvas (width x height), the selected one stronger;
  // a later object's pixel covers an earlier one's.
  function paint(objs, width, height) {
    const chosen = selected();
    const layers = objs.filter((o) => o.rle).map((o) => ({ id: o.id, mask: raster(o, width, height), shown: o.present !== false }));
    for (const id of rasters.keys()) if (!layers.some((l) => l.id === id)) rasters.delete(id);
    const p = painted;
    if (p && p.width === width && p.height === height && p.chosen === chosen && p.layers.length === layers.length
      && layers.every((l, i) => l.id === p.layers[i].id && l.mask === p.layers[i].mask && l.shown === p.layers[i].shown)) return;
    if (maskCanvas.width !== width || maskCanvas.height !== height) {
      maskCanvas.width = width;
      maskCanvas.height = height;
    }
    const mctx = maskCanvas.getContext("2d");
    const img = mctx.createImageData(width, height);
    const pixels = new Uint32Array(img.data.buffer); // one RGBA pixel a word: a run is one fill
    const rgba = new Uint8ClampedArray(4); // the colour's bytes, as the page's byte order words them
    for (const { id, shown } of layers) {
      if (!shown) continue;
      rgba.set([...colorFor(id), id === chosen ? 150 : 110]);
      const word = new Uint32Array(rgba.buffer)[0];
      const { runs } = rasters.get(id);
      for (let k = 0; k < runs.length; k += 2) pixels.fill(word, runs[k], runs[k + 1]);
    }
    mctx.putImageData(img, 0, 0);
    painted = { width, height, chosen, layers };
  }

  // objs [{id, rle, box, presence_probability, present}] on a frame of frameSize {width, height}.
  function draw(objs, frameSize) {
    const ctx = fit();
    const fw = frameSize.width;
    const fh = frameSize.height;
    if (!fw || !fh) return;
    const r = rasterSize(frameSize);
    paint(objs, r.width, r.height);
    const chosen = selected();
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
      ctx.lineWidth = o.id === chosen ? 3 : 1.5;
      ctx.strokeRect(dx + o.box[0] * sx, dy + o.box[1] * sy, (o.box[2] - o.box[0]) * sx,
        (o.box[3] - o.box[1]) * sy);
    }
    last = { objects: objs, frameSize };
    onAbsent(objs.filter((o) => o.present === false).map((o) => o.id));
  }

  function redraw() {
    if (last) draw(last.objects, last.frameSize);
  }

  // Is media point (x, y) on object id's newest mask? (a click there refines it)
  function onObject(id, x, y) {
    const kept = last && id != null ? rasters.get(id) : null;
    const size = mediaSize();
    if (!kept || !size.width) return false;
    const fx = Math.floor((x * kept.width) / size.width);
    const fy = Math.floor((y * kept.height) / size.height);
    if (fx < 0 || fy < 0 || fx >= kept.width || fy >= kept.height) return false;
    return kept.mask[fy * kept.width + fx] === 1;
  }

  return { mediaSize, coords, toFrame, stagePoint, draw, clear, redraw, onObject };
}
