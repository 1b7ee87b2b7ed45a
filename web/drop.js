// A mode's files, the two ways a person gives one: chosen in its picker (`input`, cleared after,
// so the same file chosen again uploads again) or dropped on the stage. Both go to `upload`.
export function acceptFiles(input, stageEl, { active, upload }) {
  input.addEventListener("change", () => {
    if (input.files && input.files[0]) upload(input.files[0]);
    input.value = "";
  });
  acceptDrops(stageEl, { active, upload });
}

// Files dropped on the stage: the shown mode takes the first one exactly as its Upload button
// does (the same checks, the same refusals), and the stage is outlined while a file is over it.
function acceptDrops(stageEl, { active, upload }) {
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

// A file dropped anywhere else (beside the stage, or in Live) would have the browser open it in
// the page's place: the live session, a question under way and the page's state would go. Such
// a drop is refused (the pointer says so) unless a stage took it first.
for (const type of ["dragover", "drop"]) {
  window.addEventListener(type, (e) => {
    if (e.defaultPrevented || !e.dataTransfer || ![...e.dataTransfer.types].includes("Files")) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = "none";
  });
}
