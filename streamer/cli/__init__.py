"""The `fmu-live` program's commands: each command's parsing and wiring in its own module, the work
in streamer/ and workers/. `main.py` is the entry point; `serve` (no command) is `serve.py`."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from streamer.cli.dataset import dataset_command
from streamer.cli.evaluate import eval_command
from streamer.cli.lora import merge_lora_command
from streamer.cli.track import track_command

# The offline commands, by the name given first on the command line.
COMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "track": track_command,
    "eval": eval_command,
    "dataset": dataset_command,
    "merge-lora": merge_lora_command,
}
