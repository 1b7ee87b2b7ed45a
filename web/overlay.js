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

// COCO RLE {size: [h, w], counts} to a row-major h*w Uint8Array, 1 = object.
export function decodeRLE(rle) {
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
// activeMode() names the mode shown; selected() the selected object id (drawn stronger).
export function createStage(stage, overlay, activeMode, selected) {
  const maskCanvas = document.createElement("canvas");
  let last = null; // {objects, frameSize, masks: Map(id -> Uint8Array)}

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

  function fit() {
    const w = stage.clientWidth;
    const h = stage.clientHeight;
    if (overlay.width !== w || overlay.height !== h) {
      overlay.width = w;
      overlay.height = h;
    }
  }

  function clear() {
    fit();
    overlay.getContext("2d").clearRect(0, 0, overlay.width, overlay.height);
    last = null;
  }

  // objs [{id, rle, box, presence_probability, present}] on a frame of frameSize {width, height}.
  function draw(objs, frameSize) {
    fit();
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
    const chosen = selected();
    for (const o of objs) {
      if (!o.rle) continue;
      const m = decodeRLE(o.rle);
      masks.set(o.id, m);
      if (o.present === false) continue;
      const c = colorFor(o.id);
      const alpha = o.id === chosen ? 150 : 110;
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
      ctx.lineWidth = o.id === chosen ? 3 : 1.5;
      ctx.strokeRect(dx + o.box[0] * sx, dy + o.box[1] * sy, (o.box[2] - o.box[0]) * sx,
        (o.box[3] - o.box[1]) * sy);
    }
    last = { objects: objs, frameSize, masks };
  }

  function redraw() {
    if (last) draw(last.objects, last.frameSize);
  }

  // Is media point (x, y) on object id's newest mask? (a click there refines it)
  function onObject(id, x, y) {
    if (!last || id == null) return false;
    const m = last.masks.get(id);
    const size = mediaSize();
    const fs = last.frameSize;
    if (!m || !size.width) return false;
    const fx = Math.floor((x * fs.width) / size.width);
    const fy = Math.floor((y * fs.height) / size.height);
    if (fx < 0 || fy < 0 || fx >= fs.width || fy >= fs.height) return false;
    return m[fy * fs.width + fx] === 1;
  }

  return { mediaSize, coords, draw, clear, redraw, onObject };
}
