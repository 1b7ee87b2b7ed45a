"""The commands' log: its level and format, and the lines of other libraries that say nothing a
person can act on, silenced or said once with their meaning."""

from __future__ import annotations

import logging
import os
import warnings


def setup_logging(default_level: str) -> None:
    """Log lines at FMU_LOG_LEVEL, else at `default_level` (the server INFO, commands WARNING)."""
    logging.basicConfig(
        level=os.environ.get("FMU_LOG_LEVEL", default_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


class _Sam2Progress(logging.Filter):
    """Drops sam2's progress lines: below WARNING, logged on the root logger from sam2's code."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_sam2 = f"{os.sep}sam2{os.sep}" in record.pathname
        return not (record.name == "root" and record.levelno < logging.WARNING and from_sam2)


def quiet_noisy_logs() -> None:
    """Lines that say nothing a person can act on are silenced, or said once with their meaning."""
    # aioice logs every ICE candidate pair check at INFO.
    logging.getLogger("aioice").setLevel(logging.WARNING)
    # huggingface_hub gives its logger a handler of its own and also lets records through to
    # ours, so each retry warning came out twice (once without a time). Its lines go through our
    # handler only (and so become JSON with --log-json).
    import huggingface_hub.utils.logging  # noqa: F401 - adds the handler at import

    hub = logging.getLogger("huggingface_hub")
    for handler in list(hub.handlers):
        hub.removeHandler(handler)
    # sam2's image predictor logs three lines on the root logger at each picture it encodes (an
    # upload, a Find's frame): "For numpy array image, we assume (HxWxC) format", "Computing
    # image embeddings...", "...computed.". Ours says it once, with the time.
    root = logging.getLogger()
    if not any(isinstance(f, _Sam2Progress) for f in root.filters):
        root.addFilter(_Sam2Progress())
    # sam2 warns on every mask when its optional CUDA extension is not built (4 lines each time).
    warnings.filterwarnings("ignore", message=r"(?s).*Skipping the post-processing step")
    try:
        import importlib.util

        built = importlib.util.find_spec("sam2._C") is not None
    except (ImportError, ValueError):
        built = False
    if not built:
        logging.getLogger("fmu").info(
            "sam2's optional CUDA extension (_C) is not built: small holes in masks are not "
            "filled; masks are otherwise the same"
        )
