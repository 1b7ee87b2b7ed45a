// Clip's exports, the JSON and the overlay video: links disabled while they cannot work, with why
// as their tooltip (as Play's and the scrubber's), and a click on one says it too.

import { el } from "./dom.js";

// current(): the clip shown, or null; jobs: the job bar (clip_jobs.js: any(), running());
// objectCount(): how many objects the clip has.
export function createExports({ shell, current, jobs, objectCount }) {
  const exportJson = el("a", { "data-testid": "export-json", class: "clip-export disabled", download: "" }, "Export JSON");
  const exportVideo = el("a", { "data-testid": "export-video", class: "clip-export disabled", download: "" }, "Export video");

  // The server renders no video while tracking runs (409).
  function update() {
    const clip = current();
    const ready = clip && (objectCount() || jobs.any());
    const nothing = ready ? null : "nothing to export yet: click an object in the clip to track it first";
    const tracking = jobs.running() ? "tracking is still running: export the video when the progress bar says done" : null;
    exportControl(exportJson, "export.json", nothing);
    exportControl(exportVideo, "export.mp4", nothing || tracking);
  }

  function exportControl(a, file, why) {
    const clip = current();
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

  for (const a of [exportJson, exportVideo]) {
    // Disabled (update): a click says why, instead of downloading the server's refusal.
    a.addEventListener("click", (e) => {
      if (a.getAttribute("aria-disabled") !== "true") return;
      e.preventDefault();
      shell.showError(a.title);
    });
  }

  return { elements: [exportJson, exportVideo], update };
}
