"""A headless Streamlit client: speaks the app's websocket protocol (protobuf BackMsg / ForwardMsg) the way
the browser does, so one process can hold many real sessions against a running server.

Used by bench/load.py (many sessions, latency and memory) and by the tests of hosted-mode behaviour
(what one anonymous visitor can and cannot do to another). Each rerun is timed from sending the
request to the server's script_finished; exceptions shown on the page are collected as errors.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import websockets
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from streamlit.proto.WidgetStates_pb2 import WidgetState

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Rerun:
    seconds: float
    elements: list = field(default_factory=list)    # (type, proto, fragment id) of every element drawn
    errors: list = field(default_factory=list)      # exception messages shown on the page
    status: str = ""                                 # how the script run ended

    def buttons(self) -> dict[str, tuple[str, str]]:
        """label -> (widget id, fragment id or "") of every button drawn."""
        return {e.button.label: (e.button.id, frag) for kind, e, frag in self.elements if kind == "button"}

    def texts(self) -> list[str]:
        out = []
        for kind, e, _ in self.elements:
            if kind == "markdown":
                out.append(e.markdown.body)
            elif kind in ("alert",):
                out.append(e.alert.body)
        return out


class Session:
    """One visitor: a websocket to /_stcore/stream."""

    def __init__(self, port: int):
        self.url = f"ws://127.0.0.1:{port}/_stcore/stream"
        self.ws = None
        self.pages: dict[str, str] = {}   # url path ("" for the home page) -> page_script_hash

    async def connect(self) -> None:
        self.ws = await websockets.connect(self.url, subprotocols=["streamlit"], max_size=2 ** 26,
                                           open_timeout=30)

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
            self.ws = None

    async def send(self, msg: BackMsg) -> None:
        await self.ws.send(msg.SerializeToString())

    async def rerun(self, page: str = "", query: str = "", widgets: list[WidgetState] | None = None,
                    timeout: float = 60.0, fragment: str = "") -> Rerun:
        msg = BackMsg()
        cs = msg.rerun_script
        cs.query_string = query
        cs.page_script_hash = self.pages.get(page, "")
        cs.page_name = page
        cs.fragment_id = fragment        # a click inside an st.fragment reruns only that fragment
        for w in widgets or []:
            cs.widget_states.widgets.append(w)
        t0 = time.perf_counter()
        await self.send(msg)
        out = Rerun(0.0)
        deadline = t0 + timeout
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.1, deadline - time.perf_counter()))
            fwd = ForwardMsg()
            fwd.ParseFromString(raw)
            kind = fwd.WhichOneof("type")
            if kind in ("new_session", "navigation"):
                for p in getattr(fwd, kind).app_pages:
                    self.pages[p.url_pathname] = p.page_script_hash
            elif kind == "delta" and fwd.delta.WhichOneof("type") == "new_element":
                el = fwd.delta.new_element
                etype = el.WhichOneof("type")
                out.elements.append((etype, el, fwd.delta.fragment_id))
                if etype == "exception":
                    out.errors.append(f"{el.exception.type}: {el.exception.message}")
            elif kind == "script_finished":
                out.status = ForwardMsg.ScriptFinishedStatus.Name(fwd.script_finished)
                if out.status != "FINISHED_EARLY_FOR_RERUN":
                    break
        out.seconds = time.perf_counter() - t0
        return out

    async def click(self, page: str, button: tuple[str, str], query: str = "") -> Rerun:
        """Click a button (its (widget id, fragment id) from Rerun.buttons()), as the browser does."""
        widget, fragment = button
        return await self.rerun(page, query, [WidgetState(id=widget, trigger_value=True)], fragment=fragment)

    async def clear_caches(self) -> None:
        """What any visitor's browser can send: clear every st.cache_* for all users."""
        msg = BackMsg()
        msg.clear_cache = True
        await self.send(msg)


# ---------------------------------------------------------------------------------------------------
# A server to talk to

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run streamlit_app.py` on 127.0.0.1 in a child process, until stop()."""

    def __init__(self, env: dict | None = None, hosted: bool = True, log: str | os.PathLike | None = None):
        self.port = free_port()
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **({"LLM_PLAYGROUND_HOSTED": "1"} if hosted else {}),
                    **(env or {})}
        self.log = open(log, "w") if log else subprocess.DEVNULL
        self.proc = None

    def start(self, timeout: float = 90) -> "Server":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "streamlit_app.py"), "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(self.port)],
            cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_stcore/health", timeout=2) as r:
                    if r.read() == b"ok":
                        return self
            except OSError:
                time.sleep(0.2)
        raise TimeoutError("streamlit did not answer /_stcore/health")

    def rss_mb(self) -> float:
        """Resident memory of the server process, in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not subprocess.DEVNULL:
            self.log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
