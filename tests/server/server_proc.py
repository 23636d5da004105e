"""A real `specserve serve` subprocess on a free loopback port (`--port 0`; the port is read from its log line)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"specserve listening on (http://\S+)")


class ServerProcess:
    def __init__(self, *args: str, api_key: str | None = None, env: dict[str, str] | None = None):
        self.args = [str(a) for a in args]
        self.api_key = api_key
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []
        self.base_url = ""
        self.health_seen: list[tuple[int, dict]] = []  # /health answers while waiting for ready
        self._url_found = threading.Event()

    # --- process -------------------------------------------------------------------------------------------------

    def start(self, timeout: float = 180.0, wait_ready: bool = True) -> ServerProcess:
        cmd = [sys.executable, "-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", "0", *self.args]
        if self.api_key:
            cmd += ["--api-key", self.api_key]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self._url_found.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start (rc={self.proc.poll()}):\n{self.output()}")
        if wait_ready:
            while True:
                try:
                    r = httpx.get(self.base_url + "/health", timeout=5)
                    self.health_seen.append((r.status_code, r.json()))
                    if r.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"server never became ready:\n{self.output()}")
                time.sleep(0.05)
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            m = _LISTENING.search(line)
            if m and not self._url_found.is_set():
                self.base_url = m.group(1)
                self._url_found.set()

    def output(self) -> str:
        return "\n".join(self.lines)

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    # --- clients -------------------------------------------------------------------------------------------------

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, **kw) -> openai.OpenAI:
        """The official SDK, without retries (it would retry 429/5xx and hide them)."""
        kw.setdefault("timeout", 120)
        kw.setdefault("api_key", self.api_key or "unused")
        return openai.OpenAI(base_url=self.v1, max_retries=0, **kw)

    def health(self) -> tuple[int, dict]:
        r = httpx.get(self.base_url + "/health", timeout=10)
        return r.status_code, r.json()

    def wait_idle(self, timeout: float = 10.0) -> dict:
        """Wait until no request runs or waits and every slot is free; return the last /health body."""
        deadline = time.monotonic() + timeout
        body: dict = {}
        while time.monotonic() < deadline:
            _, body = self.health()
            if body.get("running") == 0 and body.get("waiting") == 0 and body.get("free_slots") == body.get(
                    "num_slots"):
                return body
            time.sleep(0.05)
        raise AssertionError(f"server not idle after {timeout}s: {body}")

    def request_logs(self) -> list[dict]:
        out = []
        for line in list(self.lines):
            _, sep, rest = line.partition("specserve.requests: ")
            if sep:
                out.append(json.loads(rest))
        return out
