// The page's entry point: the shell, then every mode added to it, then the first tab opened.
// Modules load in this order by their imports, whatever the order of tags in index.html.
import { createAgent } from "./agent.js";
import { createClipMode } from "./clip.js";
import { createImageMode } from "./image.js";
import { createLiveMode } from "./live.js";
import { createShell } from "./shell.js";

const shell = createShell();
shell.addMode("live", createLiveMode(shell));
shell.addMode("clip", createClipMode(shell));
shell.addMode("image", createImageMode(shell));
const agent = createAgent(shell);
shell.allCandidates = agent.allCandidates;
shell.start();
