"""A reward plugin in its own process: a deadline per call, `sys.exit` and crashes contained, output capped.

A plugin is user code: it may block forever, call `sys.exit`, kill its process or print megabytes per
sample. `IsolatedReward` runs it in a forked child (which inherits the loaded function, so plugins
registered in this process work too) and waits for each call at most `timeout_s`; a call that times
out, raises, exits or takes the child down scores 0 with the reason, and the child is replaced when
needed. The child's stdout and stderr (file descriptors 1 and 2, so C-level writes too) go to a pipe
read by a thread that keeps the first `output_bytes` of each call and counts the rest.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from spacevista.rewards.registry import RewardFn, call_reward

_END = b"\x00spacevista-reward-call-end\x00"  # written after each call: the output of that call is complete


@dataclass(frozen=True, slots=True)
class PluginResult:
    """One call's outcome: the score (0 on failure), why it failed (None if it did not), what it printed."""

    score: float
    error: str | None = None
    output: str = ""


class _Capture:
    """Redirect fds 1 and 2 into a pipe drained by a thread; keep the first `limit` bytes of each call."""

    def __init__(self, limit: int) -> None:
        self.limit, self.kept, self.total, self._tail = limit, bytearray(), 0, b""
        self._done = threading.Event()
        read, write = os.pipe()
        os.dup2(write, 1)
        os.dup2(write, 2)
        os.close(write)
        # whatever sys.stdout/err were in the parent (a test runner's capture, a Ray log stream): fds 1 and 2 now
        sys.stdout = open(1, "w", encoding="utf-8", errors="replace", closefd=False)
        sys.stderr = open(2, "w", encoding="utf-8", errors="replace", closefd=False)
        threading.Thread(target=self._drain, args=(read,), daemon=True).start()

    def _drain(self, fd: int) -> None:
        while chunk := os.read(fd, 1 << 16):
            data, self._tail = self._tail + chunk, b""
            while (end := data.find(_END)) >= 0:
                self._keep(data[:end])
                data = data[end + len(_END):]
                self._done.set()
            safe = max(0, len(data) - len(_END) + 1)  # the rest may be the start of an end marker
            self._keep(data[:safe])
            self._tail = data[safe:]

    def _keep(self, data: bytes) -> None:
        self.total += len(data)
        self.kept += data[:max(0, self.limit - len(self.kept))]

    def start(self) -> None:
        self.kept, self.total = bytearray(), 0
        self._done.clear()

    def finish(self) -> str:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a plugin may have closed or replaced them
                pass
        os.write(1, _END)
        self._done.wait(timeout=2.0)
        text = self.kept.decode("utf-8", "replace")
        dropped = self.total - len(self.kept)
        return text + (f"\n[... {dropped} more bytes of plugin output dropped]" if dropped > 0 else "")


def _serve(conn: Connection, fn: RewardFn, output_bytes: int) -> None:
    """The child's loop: one call per message, one PluginResult back; exits only through os._exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    capture = _Capture(output_bytes)
    while True:
        try:
            args = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        capture.start()
        try:
            score, error = call_reward(fn, *args)
        except SystemExit as exc:
            score, error = 0.0, f"called sys.exit({exc.code!r})"
        except BaseException as exc:  # KeyboardInterrupt, GeneratorExit ... from user code: contained too
            score, error = 0.0, f"raised {type(exc).__name__}: {exc}"
            traceback.print_exc()
        result = PluginResult(score, error, capture.finish())
        try:
            conn.send(result)
        except Exception as exc:  # an unpicklable error message must not kill the child
            conn.send(PluginResult(0.0, f"result could not be sent: {exc}"))


class IsolatedReward:
    """Calls `fn` in a child process with a deadline; see the module docstring."""

    def __init__(self, name: str, fn: RewardFn, timeout_s: float = 10.0, output_bytes: int = 4096) -> None:
        if not timeout_s > 0:
            raise ValueError(f"plugin {name!r}: timeout_s must be > 0, got {timeout_s!r}")
        self.name, self.fn, self.timeout_s, self.output_bytes = name, fn, timeout_s, output_bytes
        self._proc: Any = None
        self._conn: Connection | None = None

    def __call__(self, data_source: str, solution_str: str, ground_truth: Any,
                 extra_info: dict[str, Any] | None) -> PluginResult:
        conn = self._child()
        try:
            conn.send((data_source, solution_str, ground_truth, extra_info))
            if not conn.poll(self.timeout_s):
                self.close()
                return PluginResult(0.0, f"timed out after {self.timeout_s:g} s")
            return conn.recv()
        except (EOFError, OSError, BrokenPipeError):
            code = self._exitcode()
            self.close()
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
            return PluginResult(0.0, f"plugin process {how}")

    def _child(self) -> Connection:
        if self._conn is None:
            parent, child = multiprocessing.get_context("fork").Pipe()
            self._proc = multiprocessing.get_context("fork").Process(
                target=_serve, args=(child, self.fn, self.output_bytes), name=f"reward-plugin-{self.name}",
                daemon=True)
            self._proc.start()
            child.close()
            self._conn = parent
        return self._conn

    def _exitcode(self) -> int | None:
        if self._proc is None:
            return None
        self._proc.join(timeout=1.0)
        return self._proc.exitcode

    def close(self) -> None:
        """Stop the child (killed: it may be blocked in user code); the next call starts a new one."""
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5.0)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def __getstate__(self) -> dict[str, Any]:  # a pipeline that travels (Ray) starts its own children
        return {**self.__dict__, "_proc": None, "_conn": None}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
