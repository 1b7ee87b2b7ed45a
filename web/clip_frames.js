// A clip's frames in time: the frame on screen at a time, and the time to seek to for a frame.
// `clip` is the server's clip object: frame_times (each frame's start, seconds) and fps.

// The gap from frame i to the next (the last frame: the one before it, else an average frame).
// Tolerances scale with it, not with the average frame: in a variable-frame-rate clip's burst
// a fraction of the average frame is more than a whole frame.
function gapAfter(clip, i) {
  const times = clip.frame_times;
  if (i + 1 < times.length) return times[i + 1] - times[i];
  if (i > 0) return times[i] - times[i - 1];
  return clip.fps > 0 ? 1 / clip.fps : 0.001;
}

export function frameAt(clip, t) {
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
  if (lo + 1 < times.length && times[lo + 1] - t <= 0.1 * gapAfter(clip, lo)) lo += 1;
  return lo;
}

export function timeForFrame(clip, i) {
  // Seek a quarter of the way to the next frame, so rounding never lands on a neighbour.
  return clip.frame_times[i] + 0.25 * gapAfter(clip, i);
}
