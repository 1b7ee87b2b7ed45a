"""FMU Live command line: serve the app (the default), or run one of the offline commands.

`python main.py [options]` (or `fmu-live [serve] [options]`) parses settings, loads SAM2,
optionally starts vLLM and serves the app (streamer/cli/serve.py). `fmu-live track|eval|dataset|
merge-lora` run the offline tools; each command's parsing and wiring is its own module in
streamer/cli/, its work in streamer/ and workers/.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from streamer.cli import COMMANDS
from streamer.cli.logs import setup_logging
from streamer.cli.serve import main

__all__ = ["COMMANDS", "cli", "main"]


def cli(argv: Sequence[str] | None = None) -> int:
    """The `fmu-live` program: a command name first, or none to serve (as `python main.py`)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in COMMANDS:
        setup_logging("WARNING")
        try:
            return COMMANDS[args[0]](args[1:])
        except KeyboardInterrupt:  # Ctrl-C: said in a line, not a traceback of where it stopped
            # What each command writes as it goes stays (track's clips done, dataset's records).
            print(f"fmu-live {args[0]}: interrupted", file=sys.stderr)
            return 130
    if args and args[0] == "serve":
        args = args[1:]
    return main(args)


if __name__ == "__main__":
    sys.exit(cli())
