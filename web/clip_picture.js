// What Clip says about a clip's picture: its figures, and why it has none here (a codec browsers
// cannot play, while the server's browser copy is made or after making it failed) or none yet.

// A clip with no picture here, by its browser copy's state: what the bar, the stage's line
// (style.css reads #stage's data-no-picture), a click on the stage and (the first sentence)
// Play's and the scrubber's tooltips say.
export const NO_PICTURE = {
  running: ["No picture yet: a copy of this clip that the browser can play is being made",
    "Find (on the first frame) works already; clicks, Play and the scrubber once the picture shows"],
  failed: ["No picture: the browser cannot play this clip's codec and converting it failed",
    "The server still reads its frames, so Find (on the first frame), tracking, describe, chat and the exports work; a click needs the picture"],
};
export const noPicture = (state) => NO_PICTURE[state].join(". ");
// Until the picture has loaded there is no frame on the stage to name, nor to click.
export const LOADING = "the picture is still loading: click, play or scrub once it shows";

// With no job to show, the bar says what the clip is (nothing before one is open).
function clipFigures(clip) {
  return clip ? `${clip.frame_count} frames · ${clip.width}x${clip.height} · ${clip.fps.toFixed(2)} fps` : "";
}

// [state, text] of the bar with no job to show: the clip's figures, and while it has no picture
// here why not (while a copy is made, only that: one line, no jump when the picture comes).
export function clipLine(clip) {
  if (clip && clip.proxy === "failed") return ["failed", `${clipFigures(clip)} · ${noPicture("failed")}`];
  if (clip && clip.proxy === "running") return ["idle", `${clipFigures(clip)} · ${NO_PICTURE.running[0]}`];
  return ["idle", clipFigures(clip)];
}
