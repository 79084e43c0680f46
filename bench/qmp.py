"""qmp.py: the benchmarks' QMP client (Python standard library only).

Imported by bench-relay.py, bench-postcopy.py and bench-analyze.py (and
through them by the scripts that load those): one command at a time over
QEMU's QMP Unix socket, events kept with QEMU's timestamps.
"""

import json
import socket
import time


class Qmp:
    """Just enough QMP: one command at a time; events are kept
    (`events`, the last 256, each with QEMU's own timestamp) as they come
    in between replies."""

    def __init__(self, path, timeout=30):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock.connect(path)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.file = self.sock.makefile("rwb")
        self.events = []
        self._read()  # greeting
        self.cmd("qmp_capabilities")

    def _read(self):
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("QMP: connection closed")
            msg = json.loads(line)
            if "event" not in msg:
                return msg
            self.events = self.events[-255:] + [msg]

    def cmd(self, name, **args):
        req = {"execute": name}
        if args:
            req["arguments"] = args
        self.file.write(json.dumps(req).encode() + b"\n")
        self.file.flush()
        resp = self._read()
        if "error" in resp:
            raise RuntimeError(f"QMP {name}: {resp['error']}")
        return resp["return"]

    def event_time(self, name, after=0.0):
        """The wall-clock time (s) of the first event `name` QEMU sent at
        or after `after` (time.time()), as QEMU stamped it; None if none
        came in yet (events arrive with the replies: issue a command
        first)."""
        for e in self.events:
            ts = e.get("timestamp", {})
            t = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
            if e.get("event") == name and t >= after:
                return t
        return None

    def close(self):
        try:
            self.file.close()
            self.sock.close()
        except OSError:
            pass
