// One clip's tracking results per frame, as the page draws them: fetched a window of frames at a
// time (/api/clips/{id}/results) and kept until tracking changes them.

import { json } from "./client.js";

const WINDOW = 32; // frames a fetch brings

export function createResultCache(clipId) {
  const cache = new Map(); // frame -> [{id, rle, box, presence_probability, present}]
  let generation = 0; // bumps when results change; cached windows from older generations refetch
  const cacheGen = new Map(); // frame -> generation it was fetched at
  let fetching = null;

  async function fetchWindow(start) {
    const gen = generation;
    const body = await json("GET", `/api/clips/${clipId}/results?start=${start}&count=${WINDOW}`);
    for (let i = body.start; i < body.stop; i++) {
      const per = body.frames[String(i)] || {};
      cache.set(i, Object.entries(per).map(([id, res]) => ({ id: Number(id), ...res })));
      cacheGen.set(i, gen);
    }
  }

  const stale = (i) => !cache.has(i) || cacheGen.get(i) !== generation;

  return {
    // Tracking went on: what is kept is fetched again before it is drawn.
    changed() {
      generation += 1;
    },
    // The results kept for frame i (undefined: none fetched yet).
    get: (i) => cache.get(i),
    // Frame i's results, fetched unless kept for the results as they are now; one fetch at a
    // time (a window on its way may hold this frame, else it is fetched after it). wanted():
    // whether frame i is still to draw (else no fetch is started for it). Refused: the
    // server's reason.
    async load(i, wanted) {
      if (stale(i) && fetching) {
        await fetching.catch(() => {});
        if (!wanted()) return;
      }
      if (stale(i) && !fetching) {
        fetching = fetchWindow(i).finally(() => { fetching = null; });
        await fetching;
      }
    },
  };
}
