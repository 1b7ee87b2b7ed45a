// Files dropped on the stage: the shown mode takes the first one exactly as its Upload button
// does (the same checks, the same refusals), and the stage is outlined while a file is over it.
export function acceptDrops(stageEl, { active, upload }) {
  stageEl.addEventListener("dragover", (e) => {
    if (!active()) return;
    e.preventDefault();
    stageEl.classList.add("drop-target");
  });
  stageEl.addEventListener("dragleave", () => stageEl.classList.remove("drop-target"));
  stageEl.addEventListener("drop", (e) => {
    if (!active()) return;
    e.preventDefault();
    stageEl.classList.remove("drop-target");
    const file = e.dataTransfer && e.dataTransfer.files[0];
    if (file) upload(file);
  });
}
