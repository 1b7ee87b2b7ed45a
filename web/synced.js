// Synced overlay mode: the page sends its camera frames through a canvas, each with its id in a
// band below the picture (streamer/live/frame_ids.py reads it and echoes it in each overlay as
// frame_id), and keeps the last frames it sent, so it can paint an overlay's masks over the very
// frame they were computed on. The picture is then as late as the overlay; the other mode shows
// the live camera and the newest masks over it.

const ID_BITS = 16;
const BAND_CELLS = ID_BITS + 2; // white marker, the id (most significant bit first), black marker
const BAND_HEIGHT_DIVISOR = 20;
export const RING_SIZE = 60; // frames kept: 4 s at 15 fps, 2 s at 30 fps

export const syncSupported = () =>
  typeof HTMLVideoElement !== "undefined" &&
  "requestVideoFrameCallback" in HTMLVideoElement.prototype &&
  "captureStream" in HTMLCanvasElement.prototype;

function drawBand(ctx, id, width, top, height) {
  ctx.fillStyle = "#000";
  ctx.fillRect(0, top, width, height);
  ctx.fillStyle = "#fff";
  const bits = [1];
  for (let i = ID_BITS - 1; i >= 0; i--) bits.push((id >> i) & 1);
  bits.push(0);
  bits.forEach((bit, i) => {
    if (!bit) return;
    const x0 = Math.round((i * width) / BAND_CELLS);
    const x1 = Math.round(((i + 1) * width) / BAND_CELLS);
    ctx.fillRect(x0, top, x1 - x0, height);
  });
}

// Copies every frame `video` presents into the ring and onto the sent canvas with its id band.
// track: what to send instead of the camera; frame(id): the kept frame {id, canvas, shownAt} or
// null once it has left the ring.
export function createFrameRing(video, size = RING_SIZE) {
  const sent = document.createElement("canvas");
  const sentCtx = sent.getContext("2d");
  const track = sent.captureStream(0).getVideoTracks()[0];
  const slots = new Array(size).fill(null);
  let nextId = 0;
  let stopped = false;

  function onFrame() {
    if (stopped) return;
    const w = video.videoWidth;
    const h = video.videoHeight;
    const band = Math.floor(w / BAND_HEIGHT_DIVISOR);
    if (w && h && band >= 2) {
      const t0 = performance.now();
      const id = nextId;
      nextId = (nextId + 1) % (1 << ID_BITS);
      if (sent.width !== w || sent.height !== h + band) {
        sent.width = w;
        sent.height = h + band;
      }
      sentCtx.drawImage(video, 0, 0, w, h);
      drawBand(sentCtx, id, w, h, band);
      track.requestFrame();
      let slot = slots[id % size];
      if (!slot) slot = slots[id % size] = { id, canvas: document.createElement("canvas"), shownAt: 0 };
      if (slot.canvas.width !== w || slot.canvas.height !== h) {
        slot.canvas.width = w;
        slot.canvas.height = h;
      }
      slot.canvas.getContext("2d").drawImage(sent, 0, 0, w, h, 0, 0, w, h);
      slot.id = id;
      slot.shownAt = t0;
    }
    video.requestVideoFrameCallback(onFrame);
  }
  video.requestVideoFrameCallback(onFrame);

  return {
    track,
    frame(id) {
      if (id == null) return null;
      const slot = slots[id % size];
      return slot && slot.id === id ? slot : null;
    },
    stop() {
      stopped = true;
      track.stop();
    },
  };
}
