#!/usr/bin/env python3
"""bench-relay.py: what `migproxy relay` costs, against no relay and socat.

Called by bench/bench-relay.sh, which builds build-bench/ (release) first.
Two parts, one run of the script (see docs/benchmarks.md, "Relay
overhead"):

live    Real live migrations on loopback, QEMU 7.2 (TCG), the workload
        guest (samples/workload) in a fresh pair of QEMUs per run, all with
        the same settings:
          source       -m 512M -kernel workload.elf -append WORKLOAD, then
                       (after READY and --settle seconds of dirtying)
                       migrate-set-parameters max-bandwidth=--max-bandwidth
                       (10 GiB/s: no limit) downtime-limit=--downtime-limit
          destination  -m 512M -incoming tcp:127.0.0.1:Q
        in five modes, alternated (the order rotates each round):
          direct       migrate tcp:127.0.0.1:Q
          relay        migproxy relay --listen 127.0.0.1:P
                           --to 127.0.0.1:Q --once --report R -q;
                           migrate tcp:127.0.0.1:P
          relay-plain  the same with every option that changes the stream
                       turned off (--no-zero-pages --no-priority, those the
                       relay knows; left out if it knows neither): parsing
                       and forwarding only
          socat        socat TCP-LISTEN:P,reuseaddr TCP:127.0.0.1:Q;
                           migrate tcp:127.0.0.1:P
          splice       bench/splice-forward P Q: the cheapest middle
                       there is (splice() through a pipe, the bytes never
                       reach user space, nothing parsed): what any middle
                       costs on this machine
        Per run: the source's query-migrate total-time (and downtime,
        transferred, rounds), the CPU both QEMUs and the whole machine
        used meanwhile (/proc/PID/stat, /proc/stat); for the middle (relay,
        socat) its CPU seconds (utime + stime from wait4()) and its peak
        RSS (VmHWM, sampled from /proc/PID/status every 20 ms); the relay's
        report must say outcome completed, not partial.  CPU per GB is over
        the bytes the relay forwarded (its report: channels[].to_dst.bytes
        + to_src.bytes); for socat over the source's ram.transferred.

stream  The relay alone: a captured stream of >= 2 GB (bench-analyze's
        bench/.cache/long-7.2.mig, captured here the same way if missing)
        from the page cache, pushed by a sender (this script, sendfile())
        through the middle into a sink (this script, recv_into() a 1 MiB
        buffer and drop), over loopback.  Modes, alternated:
          direct       sender -> sink (no middle: the ceiling)
          socat        socat TCP-LISTEN:P,reuseaddr TCP:127.0.0.1:Q
                       (socat's default 8 KiB buffer)
          socat-1M     the same with -b 1048576 (the relay's buffer size)
          relay        migproxy relay ... --once --report R -q
          relay-plain  as in live
          splice       as in live
        GB/s = stream bytes / (sender starts connecting .. sink reads EOF);
        CPU seconds per GB and peak RSS of the middle as above.  The relay's
        report must say completed, not partial, all bytes forwarded.

Prints a markdown table on stdout, progress on stderr; --json writes every
raw number.

Every process is started with a recorded pid (also written to
$MP_BENCH_PIDFILE for bench-relay.sh's trap) and ended by that pid; ports
are picked free and held only by those processes.  SIGINT, SIGTERM and
SIGHUP end the run through the same cleanup.

Python standard library only.
"""
import argparse
import importlib.util
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Qmp  # noqa: E402  (bench/qmp.py)
QEMU = "/usr/bin/qemu-system-x86_64"
MACHINE = "pc-q35-7.2"
GUEST_RAM = "512M"
WORKLOAD = "mem=448M rate=20000"
LIVE_MODES = ("direct", "relay", "relay-plain", "socat", "splice")
STREAM_MODES = ("direct", "socat", "socat-1M", "relay", "relay-plain",
                "splice")
# what relay-plain turns off, if the relay has it
PLAIN_OPTIONS = ("--no-zero-pages", "--no-priority")
# issue 3, item 8
TARGET_LIVE = 1.05    # relay migration time <= 1.05 x direct
TARGET_STREAM = 0.90  # relay throughput >= 0.90 x socat


def log(*a):
    print("bench-relay:", *a, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# helpers run as child processes: `bench-relay.py _sink PORT`,
# `bench-relay.py _send FILE PORT`; each prints one JSON line at the end


def child_sink(port):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(1)
    c, _ = s.accept()
    s.close()
    buf = bytearray(1 << 20)
    n = 0
    t_first = None
    while True:
        k = c.recv_into(buf)
        if not k:
            break
        if t_first is None:
            t_first = time.monotonic()
        n += k
    t_eof = time.monotonic()
    c.close()
    print(json.dumps({"bytes": n, "t_first": t_first, "t_eof": t_eof}),
          flush=True)


def child_send(path, port):
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        t0 = time.monotonic()
        s = socket.create_connection(("127.0.0.1", port))
        off = 0
        while off < size:
            n = os.sendfile(s.fileno(), f.fileno(), off, size - off)
            if n == 0:
                break
            off += n
    t_sent = time.monotonic()
    # like a migration source: FIN, then wait for the other side's FIN
    s.shutdown(socket.SHUT_WR)
    while s.recv(65536):
        pass
    t_eof = time.monotonic()
    s.close()
    print(json.dumps({"bytes": off, "t0": t0, "t_sent": t_sent,
                      "t_eof": t_eof}), flush=True)


# ---------------------------------------------------------------------------


def start_time(pid):
    """/proc/PID/stat field 22 (clock ticks since boot), or '?'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "?"


class Proc:
    """A started process: Popen, its QMP (if any), its peak-memory sampler,
    and its rusage once reaped by wait4()."""

    def __init__(self, name, popen):
        self.name = name
        self.p = popen
        self.pid = popen.pid
        self.qmp = None
        self.hwm_kib = 0
        self.rusage = None
        self.status = None
        self._stop = threading.Event()
        self._sampler = None

    def sample_hwm(self, every=0.02):
        """VmHWM is per address space, so it starts afresh at exec (unlike
        wait4's ru_maxrss, which keeps the forking Python's mark)."""
        def loop():
            path = f"/proc/{self.pid}/status"
            while not self._stop.is_set():
                try:
                    with open(path) as f:
                        for line in f:
                            if line.startswith("VmHWM:"):
                                self.hwm_kib = max(self.hwm_kib,
                                                   int(line.split()[1]))
                                break
                except OSError:
                    return
                self._stop.wait(every)
        self._sampler = threading.Thread(target=loop, daemon=True)
        self._sampler.start()

    def reap(self, timeout):
        """wait4() with a time limit: (exit code, rusage) or raises."""
        deadline = time.monotonic() + timeout
        while True:
            got, status, ru = os.wait4(self.pid, os.WNOHANG)
            if got:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} (pid {self.pid}) did not "
                                   f"exit in {timeout} s")
            time.sleep(0.01)
        self._stop.set()
        self.rusage = ru
        self.status = os.waitstatus_to_exitcode(status)
        self.p.returncode = self.status  # reaped here, not by Popen
        return self.status

    def alive(self):
        return self.status is None and self.p.poll() is None

    def cpu_s(self):
        return self.rusage.ru_utime + self.rusage.ru_stime


class Procs:
    """Processes of this run, ended by pid in reverse start order."""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.procs = []

    def start(self, name, argv, log_to=None, **kw):
        """log_to: a file for stdout and stderr (appended)."""
        log(f"start {name}: {' '.join(shlex.quote(a) for a in argv)}")
        kw.setdefault("stdin", subprocess.DEVNULL)
        if log_to:
            with open(log_to, "ab") as f:
                p = Proc(name, subprocess.Popen(argv, stdout=f,
                                                stderr=subprocess.STDOUT,
                                                **kw))
        else:
            p = Proc(name, subprocess.Popen(argv, **kw))
        self.procs.append(p)
        # pid, start time and name: bench-relay.sh's trap ends only a
        # process whose pid and start time both match, never a reused pid
        if self.pidfile:
            with open(self.pidfile, "a") as f:
                f.write(f"{p.pid} {start_time(p.pid)} {name}\n")
        return p

    def stop_all(self):
        for e in reversed(self.procs):
            if e.alive() and e.qmp is not None:
                try:
                    e.qmp.cmd("quit")
                except (OSError, RuntimeError, ValueError):
                    pass
            if e.qmp is not None:
                e.qmp.close()
            e._stop.set()
            if e.status is not None:
                continue
            for sig, wait in ((None, 3), (signal.SIGTERM, 3),
                              (signal.SIGKILL, 5)):
                if sig is not None and e.p.poll() is None:
                    try:
                        os.kill(e.pid, sig)
                    except ProcessLookupError:
                        pass
                try:
                    e.p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.procs = []


TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu_s(pid):
    """utime + stime of a live process, all threads (/proc/PID/stat)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            w = f.read().rsplit(")", 1)[1].split()
        return (int(w[11]) + int(w[12])) / TICK
    except (OSError, IndexError, ValueError):
        return None


def machine_ticks():
    """(busy, total) clock ticks of all CPUs since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        w = [int(x) for x in f.readline().split()[1:]]
    idle = w[3] + w[4]  # idle + iowait
    total = sum(w[:8])  # without guest time, already in user
    return total - idle, total


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port):
    """Whether something listens on 127.0.0.1:port (or any address), from
    /proc/net/tcp: no probe connection, which the relay would log."""
    want = f":{port:04X}"
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    w = line.split()
                    if w[1].endswith(want) and w[3] == "0A":
                        return True
        except OSError:
            pass
    return False


def wait_for(pred, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        for p in procs:
            if not p.alive():
                raise RuntimeError(f"{what}: {p.name} exited with "
                                   f"{p.p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out after {timeout} s")
        time.sleep(0.02)


def console_line(path, needle):
    try:
        with open(path, errors="replace") as f:
            return next((l.strip() for l in f if needle in l), None)
    except FileNotFoundError:
        return None


def channel_bytes(report):
    return sum(c["to_dst"]["bytes"] + c["to_src"]["bytes"]
               for c in report["channels"])


def check_report(path, mid, want_bytes=None):
    """The relay exited 0 and its report says the migration completed and
    was parsed to its end.  @return the report."""
    if mid.status != 0:
        raise RuntimeError(f"relay exit status {mid.status}")
    with open(path) as f:
        rep = json.load(f)
    if rep.get("outcome") != "completed":
        raise RuntimeError(f"relay outcome {rep.get('outcome')!r}")
    if rep.get("partial"):
        raise RuntimeError(f"relay report partial: {rep['channels']}")
    if want_bytes is not None and channel_bytes(rep) != want_bytes:
        raise RuntimeError(f"relay forwarded {channel_bytes(rep)} bytes, "
                           f"not {want_bytes}")
    return rep


def plain_options(migproxy):
    """The options of PLAIN_OPTIONS this relay has."""
    helptext = subprocess.run([migproxy, "relay", "--help"],
                              capture_output=True, text=True).stdout
    return [o for o in PLAIN_OPTIONS if o in helptext.split()]


_plain = {}


def middle_argv(mode, migproxy, lport, dport, report):
    if mode in ("relay", "relay-plain"):
        if mode == "relay-plain" and migproxy not in _plain:
            _plain[migproxy] = plain_options(migproxy)
        return [migproxy, "relay", "--listen", f"127.0.0.1:{lport}",
                "--to", f"127.0.0.1:{dport}", "--once", "--report", report,
                "-q", "--no-progress"] + (_plain[migproxy]
                                          if mode == "relay-plain" else [])
    if mode == "socat":
        return ["socat", f"TCP-LISTEN:{lport},reuseaddr",
                f"TCP:127.0.0.1:{dport}"]
    if mode == "socat-1M":
        return ["socat", "-b", "1048576", f"TCP-LISTEN:{lport},reuseaddr",
                f"TCP:127.0.0.1:{dport}"]
    if mode == "splice":
        build = os.path.dirname(os.path.dirname(migproxy))
        return [os.path.join(build, "bench", "splice-forward"), str(lport),
                str(dport)]
    raise ValueError(mode)


# ---------------------------------------------------------------------------
# live migrations


def qemu_argv(args, run_dir, side, workload):
    argv = [args.qemu, "-accel", "tcg", "-M", MACHINE, "-m", args.guest_ram,
            "-display", "none", "-nodefaults", "-no-user-config",
            "-qmp", f"unix:{run_dir}/{side}.qmp,server=on,wait=off"]
    if side == "src":
        argv += ["-kernel", workload, "-append", args.workload,
                 "-debugcon", f"file:{run_dir}/src.con"]
    return argv


def live_run(args, mode, run_dir, procs, migproxy, workload):
    res = {"mode": mode}
    dport = free_port()
    dst = procs.start("dst-qemu", qemu_argv(args, run_dir, "dst", workload)
                      + ["-incoming", f"tcp:127.0.0.1:{dport}"],
                      log_to=f"{run_dir}/dst.log")
    t_boot = time.monotonic()
    src = procs.start("src-qemu", qemu_argv(args, run_dir, "src", workload),
                      log_to=f"{run_dir}/src.log")
    ready = wait_for(lambda: console_line(f"{run_dir}/src.con",
                                          "workload: READY"),
                     args.boot_timeout, "source READY", (src, dst))
    res["boot_to_ready_s"] = round(time.monotonic() - t_boot, 2)
    res["ready"] = ready
    dst.qmp = Qmp(f"{run_dir}/dst.qmp")
    src.qmp = Qmp(f"{run_dir}/src.qmp")
    wait_for(lambda: listening(dport), 30, "destination listening", (dst,))
    src.qmp.cmd("migrate-set-parameters",
                **{"max-bandwidth": args.max_bandwidth,
                   "downtime-limit": args.downtime_limit})
    time.sleep(args.settle)  # the guest dirtying at its rate

    uri = f"tcp:127.0.0.1:{dport}"
    mid = None
    report = f"{run_dir}/report.json"
    if mode != "direct":
        lport = free_port()
        mid = procs.start(mode, middle_argv(mode, migproxy, lport, dport,
                                            report),
                          log_to=f"{run_dir}/{mode}.log")
        mid.sample_hwm()
        wait_for(lambda: listening(lport), 30, f"{mode} listening", (mid,))
        uri = f"tcp:127.0.0.1:{lport}"

    cpu0 = (proc_cpu_s(src.pid), proc_cpu_s(dst.pid), machine_ticks())
    src.qmp.cmd("migrate", uri=uri)
    deadline = time.monotonic() + args.migrate_timeout
    while True:
        s = src.qmp.cmd("query-migrate")
        st = s.get("status")
        # (QEMU 7.2 says completed a moment before it sets total-time
        # and downtime: a poll in between reads 0 for both)
        if st in ("failed", "cancelled") or (st == "completed"
                                              and s.get("total-time")):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"migration still {st} after "
                               f"{args.migrate_timeout} s")
        time.sleep(0.05)
    cpu1 = (proc_cpu_s(src.pid), proc_cpu_s(dst.pid), machine_ticks())
    if st != "completed":
        raise RuntimeError(f"migration {st}: {s.get('error-desc', s)}")
    # CPU used while the migration ran (to the poll that saw it complete):
    # both QEMUs, and every CPU of the machine (other users included)
    busy, total = (cpu1[2][0] - cpu0[2][0], cpu1[2][1] - cpu0[2][1])
    res["src_cpu_s"] = round(cpu1[0] - cpu0[0], 2)
    res["dst_cpu_s"] = round(cpu1[1] - cpu0[1], 2)
    res["machine_busy"] = round(busy / total, 3) if total else None
    res["machine_busy_cpu_s"] = round(busy / TICK, 2)
    d = wait_for(lambda: (lambda r: r if r.get("status") in
                          ("completed", "failed") else None)(
                              dst.qmp.cmd("query-migrate")),
                 30, "destination completed", (dst,))
    if d.get("status") != "completed":
        raise RuntimeError(f"destination migration {d.get('status')}")
    # the destination guest runs from here (busy): stop it before timing
    # anything else
    try:
        dst.qmp.cmd("stop")
    except RuntimeError:
        pass
    ram = s.get("ram", {})
    res.update({
        "total_ms": s.get("total-time"),
        "downtime_ms": s.get("downtime"),
        "setup_ms": s.get("setup-time"),
        "transferred": ram.get("transferred"),
        "normal": ram.get("normal"),
        "duplicate": ram.get("duplicate"),
        "dirty_syncs": ram.get("dirty-sync-count"),
        "mbps": ram.get("mbps"),
    })
    if mid is not None:
        mid.reap(30)
        res["cpu_s"] = mid.cpu_s()
        res["utime_s"] = mid.rusage.ru_utime
        res["stime_s"] = mid.rusage.ru_stime
        res["peak_rss_kib"] = mid.hwm_kib
        if mode.startswith("relay"):
            rep = check_report(report, mid)
            res["bytes"] = channel_bytes(rep)
            res["relay_total_ms"] = rep.get("total_ms")
            res["relay_downtime_ms"] = rep.get("downtime_ms")
            res["relay_pages"] = rep["ram"]["pages"]
            res["relay_rounds"] = len(rep.get("rounds", []))
            res["relay_filters"] = rep.get("filters")
        else:
            if mid.status != 0:
                raise RuntimeError(f"{mode} exit status {mid.status}")
            res["bytes"] = res["transferred"]  # socat counts nothing
        res["cpu_s_per_gb"] = res["cpu_s"] / (res["bytes"] / 1e9)
        res["user_s_per_gb"] = res["utime_s"] / (res["bytes"] / 1e9)
    log(f"  {mode:7s} total {res['total_ms']} ms, downtime "
        f"{res['downtime_ms']} ms, {res['transferred'] / 1e6:.0f} MB, "
        f"{res['dirty_syncs']} syncs; QEMU CPU src {res['src_cpu_s']} s "
        f"dst {res['dst_cpu_s']} s, machine {res['machine_busy']:.0%} busy"
        + (f"; {mode} CPU {res['cpu_s']:.2f} s = "
           f"{res['cpu_s_per_gb']:.2f} s/GB, peak RSS "
           f"{res['peak_rss_kib'] / 1024:.1f} MiB" if mid else ""))
    return res


# ---------------------------------------------------------------------------
# the stream alone


def stream_run(args, mode, path, size, run_dir, procs, migproxy):
    res = {"mode": mode}
    me = os.path.abspath(__file__)
    dport = free_port()
    sink = procs.start("sink", [sys.executable, me, "_sink", str(dport)],
                       stdout=subprocess.PIPE)
    wait_for(lambda: listening(dport), 30, "sink listening", (sink,))
    port = dport
    mid = None
    report = f"{run_dir}/report-{mode}.json"
    if mode != "direct":
        port = free_port()
        mid = procs.start(mode, middle_argv(mode, migproxy, port, dport,
                                            report),
                          log_to=f"{run_dir}/{mode}.log")
        mid.sample_hwm()
        wait_for(lambda: listening(port), 30, f"{mode} listening", (mid,))
    send = procs.start("sender", [sys.executable, me, "_send", path,
                                  str(port)], stdout=subprocess.PIPE)
    # each prints one short line at its end, which the pipe holds: reap
    # first (with a time limit), read after
    out = []
    for p in (send, sink):
        if p.reap(args.stream_timeout) != 0:
            raise RuntimeError(f"{p.name} exit status {p.status}")
        out.append(p.p.stdout.read())
        p.p.stdout.close()
    a, b = json.loads(out[0]), json.loads(out[1])
    if a["bytes"] != size:
        raise RuntimeError(f"sent {a['bytes']}, stream {size}")
    secs = b["t_eof"] - a["t0"]
    res.update({"seconds": secs, "gb_s": size / 1e9 / secs,
                "sender_cpu_s": send.cpu_s(), "sink_cpu_s": sink.cpu_s()})
    if mid is not None:
        mid.reap(30)
        res["cpu_s"] = mid.cpu_s()
        res["utime_s"] = mid.rusage.ru_utime
        res["stime_s"] = mid.rusage.ru_stime
        res["peak_rss_kib"] = mid.hwm_kib
        res["cpu_s_per_gb"] = res["cpu_s"] / (size / 1e9)
        res["user_s_per_gb"] = res["utime_s"] / (size / 1e9)
        want = size
        if mode.startswith("relay"):
            rep = check_report(report, mid, want_bytes=size)
            res["outcome"] = rep["outcome"]
            res["partial"] = rep["partial"]
            res["pages"] = rep["ram"]["pages"]
            res["relay_total_ms"] = rep.get("total_ms")
            res["filters"] = rep.get("filters")
            # the zero-page filter may have shortened the stream
            want -= ((rep.get("filters") or {}).get("zero_pages") or
                     {}).get("bytes_saved", 0)
            os.unlink(report)
        elif mid.status != 0:
            raise RuntimeError(f"{mode} exit status {mid.status}")
    else:
        want = size
    if b["bytes"] != want:
        raise RuntimeError(f"sink got {b['bytes']} bytes, not {want}")
    log(f"  {mode:8s} {secs:6.3f} s {res['gb_s']:6.3f} GB/s"
        + (f"; CPU {res['cpu_s']:.2f} s ({res['utime_s']:.2f} user) = "
           f"{res['cpu_s_per_gb']:.3f} s/GB, peak RSS "
           f"{res['peak_rss_kib'] / 1024:.1f} MiB" if mid else ""))
    return res


def ensure_stream(args, workload):
    if os.path.exists(args.stream):
        return args.stream
    # captured the way bench-analyze.py captures it (its code, not a copy)
    spec = importlib.util.spec_from_file_location(
        "bench_analyze", os.path.join(ROOT, "bench", "bench-analyze.py"))
    ba = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ba)
    os.makedirs(os.path.dirname(args.stream), exist_ok=True)
    log(f"capturing {args.stream} (a few minutes under TCG)")
    ba.capture(args.stream, workload, "2200M", args.qemu)
    return args.stream


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# ---------------------------------------------------------------------------


def rotate(modes, i):
    i %= len(modes)
    return modes[i:] + modes[:i]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs, modes, key):
    out = {}
    for m in modes:
        rs = [r for r in runs if r["mode"] == m and "error" not in r]
        out[m] = {"runs": len(rs),
                  "failed": sum(1 for r in runs
                                if r["mode"] == m and "error" in r),
                  "median": median([r.get(key) for r in rs]),
                  "values": [r.get(key) for r in rs],
                  "cpu_s_per_gb": median([r.get("cpu_s_per_gb")
                                          for r in rs]),
                  "user_s_per_gb": median([r.get("user_s_per_gb")
                                           for r in rs]),
                  "cpu_s": median([r.get("cpu_s") for r in rs]),
                  "peak_rss_kib": max([r.get("peak_rss_kib") or 0
                                       for r in rs], default=0)}
    return out


def paired(runs, key, mode, ref):
    """Median over the rounds of mode / ref within a round (the two ran
    back to back, under about the same load from others)."""
    by = {}
    for r in runs:
        if "error" not in r and r.get(key) is not None:
            by.setdefault(r["run"], {})[r["mode"]] = r[key]
    return median([x[mode] / x[ref] for x in by.values()
                   if mode in x and ref in x and x[ref]])


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def report(results):
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, load average at start "
          f"{m['loadavg_start']}, at end {m.get('loadavg_end')}; "
          f"build {m['build']}, commit {m['commit']}")
    live = results.get("live")
    if live:
        s = live["summary"]
        d = s["direct"]["median"]
        print(f"\nLive migrations: QEMU 7.2 TCG, {live['setup']}\n")
        print("| mode | runs | migration time ms (median) | ratio to direct "
              "| downtime ms | QEMU CPU s (src + dst) | machine busy "
              "| middle CPU s | CPU s / GB forwarded (user) | peak RSS |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for mode in live["modes"]:
            x = s[mode]
            ok = [r for r in live["runs"]
                  if r["mode"] == mode and "error" not in r]
            dt = median([r.get("downtime_ms") for r in ok])
            qc = median([r["src_cpu_s"] + r["dst_cpu_s"] for r in ok])
            mb = median([r.get("machine_busy") for r in ok])
            runs = f"{x['runs']}" + (f" (+{x['failed']} failed)"
                                     if x["failed"] else "")
            print(f"| {mode} | {runs} | {fmt(x['median'], 0)} "
                  f"| {fmt(x['median'] / d if d and x['median'] else None)} "
                  f"| {fmt(dt, 0)} | {fmt(qc)} "
                  f"| {fmt(mb * 100 if mb is not None else None, 0)} % "
                  f"| {fmt(x['cpu_s'])} "
                  f"| {fmt(x['cpu_s_per_gb'])} ({fmt(x['user_s_per_gb'])}) "
                  + (f"| {x['peak_rss_kib'] / 1024:.1f} MiB |"
                     if x["peak_rss_kib"] else "| - |"))
        print()
        if "relay" in s:
            r = s["relay"]["median"] / d if d and s["relay"]["median"] else None
            print(f"relay / direct = {fmt(r, 3)} (target <= {TARGET_LIVE}): "
                  + ("met" if r is not None and r <= TARGET_LIVE
                     else "NOT met"))
        if "splice" in s and s["splice"]["median"] and d:
            print(f"splice / direct = {s['splice']['median'] / d:.3f} (the "
                  f"floor: what any middle costs here)")
        print("paired (median over the rounds of the ratio within a round): "
              + ", ".join(f"{k} {fmt(v, 3)}"
                          for k, v in live["paired"].items()))
        if results.get("relay_plain_options"):
            print("relay-plain: relay " + " ".join(
                results["relay_plain_options"]))
        print("\nraw (in run order per mode): total-time ms / downtime ms "
              "/ transferred MB / dirty syncs / QEMU CPU s / machine busy % "
              "/ middle CPU s")
        for mode in live["modes"]:
            rs = [r for r in live["runs"] if r["mode"] == mode]
            print(f"  {mode:11s} " + "  ".join(
                ("ERR" if "error" in r else
                 f"{r['total_ms']}/{r['downtime_ms']}/"
                 f"{r['transferred'] / 1e6:.0f}/{r['dirty_syncs']}/"
                 f"{r['src_cpu_s'] + r['dst_cpu_s']:.2f}/"
                 f"{r['machine_busy'] * 100:.0f}"
                 + (f"/{r['cpu_s']:.2f}" if "cpu_s" in r else ""))
                for r in rs))
    st = results.get("stream")
    if st:
        s = st["summary"]
        print(f"\nStream alone: {st['path']} ({st['bytes']} bytes), "
              f"{st['runs_per_mode']} runs per mode, alternated\n")
        print("| mode | runs | GB/s (median) | ratio to socat "
              "| ratio to socat -b 1M | CPU s / GB (user) | peak RSS |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        sc = s["socat"]["median"]
        sb = s["socat-1M"]["median"]
        for mode in st["modes"]:
            x = s[mode]
            print(f"| {mode} | {x['runs']} | {fmt(x['median'])} "
                  f"| {fmt(x['median'] / sc if sc else None)} "
                  f"| {fmt(x['median'] / sb if sb else None)} "
                  f"| {fmt(x['cpu_s_per_gb'], 3)} "
                  f"({fmt(x['user_s_per_gb'], 3)}) "
                  + (f"| {x['peak_rss_kib'] / 1024:.1f} MiB |"
                     if x["peak_rss_kib"] else "| - |"))
        rl = s["relay"]["median"] if "relay" in s else None
        for name, ref in (("socat", sc), ("socat -b 1M", sb)) if rl else ():
            r = rl / ref if ref else None
            print(f"\nrelay / {name} = {fmt(r, 3)} (target >= "
                  f"{TARGET_STREAM}): "
                  + ("met" if r is not None and r >= TARGET_STREAM
                     else "NOT met"), end="")
        print("\npaired (median over the rounds of the ratio within a "
              "round): " + ", ".join(f"{k} {fmt(v, 3)}" for
                                     k, v in st["paired"].items()),
              end="")
        print("\n\nraw GB/s (in run order per mode):")
        for mode in st["modes"]:
            rs = [r for r in st["runs"] if r["mode"] == mode]
            print(f"  {mode:11s} " + " ".join(
                "ERR" if "error" in r else f"{r['gb_s']:.3f}" for r in rs))


def machine_info(build, commit):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    opts = json.loads(subprocess.run(
        ["meson", "introspect", build, "--buildoptions"],
        check=True, capture_output=True).stdout)
    want = ("buildtype", "b_ndebug", "optimization")
    if commit:
        commit = commit[:12] + " (git archive)"
    else:
        commit = subprocess.run(["git", "-C", ROOT, "describe", "--always",
                                 "--dirty"], capture_output=True,
                                text=True).stdout.strip() + " (working tree)"
    return {"cpu": cpu, "cores": os.cpu_count(), "commit": commit,
            "loadavg_start": open("/proc/loadavg").read().split()[:3],
            "build": {o["name"]: o["value"] for o in opts
                      if o["name"] in want}}


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "_sink":
        return child_sink(int(sys.argv[2]))
    if len(sys.argv) >= 2 and sys.argv[1] == "_send":
        return child_send(sys.argv[2], int(sys.argv[3]))

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--commit", default="",
                    help="the commit --build was built from (bench-relay.sh "
                         "--rev); default: this working tree")
    ap.add_argument("--parts", default="live,stream",
                    help="comma-separated: live, stream")
    ap.add_argument("--runs", type=int, default=8,
                    help="live migrations per mode")
    ap.add_argument("--stream-runs", type=int, default=5,
                    help="stream runs per mode")
    ap.add_argument("--live-modes", default=",".join(LIVE_MODES),
                    help="comma-separated, direct among them (default: "
                         "all)")
    ap.add_argument("--stream-modes", default=",".join(STREAM_MODES),
                    help="comma-separated, socat and socat-1M among them "
                         "(default: all)")
    ap.add_argument("--qemu", default=QEMU)
    ap.add_argument("--guest-ram", default=GUEST_RAM)
    ap.add_argument("--workload", default=WORKLOAD,
                    help="the workload guest's -append")
    ap.add_argument("--max-bandwidth", type=int, default=10 << 30,
                    help="source max-bandwidth, bytes/s (QEMU 7.2's "
                         "default 32 MiB/s would hide any relay cost)")
    ap.add_argument("--downtime-limit", type=int, default=50,
                    help="source downtime-limit, ms (QEMU's default 300 ms "
                         "lets a fast first pass over this small guest end "
                         "at once in a long stop-copy, sometimes: bimodal "
                         "times)")
    ap.add_argument("--settle", type=float, default=1.0,
                    help="seconds of dirtying after READY before migrate")
    ap.add_argument("--stream", default=os.path.join(
        ROOT, "bench", ".cache", "long-7.2.mig"))
    ap.add_argument("--boot-timeout", type=float, default=120)
    ap.add_argument("--migrate-timeout", type=float, default=120)
    ap.add_argument("--stream-timeout", type=float, default=120)
    ap.add_argument("--run-dir", default="",
                    help="logs, consoles, reports (default: a temporary "
                         "folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--json", default="", help="write all results here")
    args = ap.parse_args()
    parts = [p for p in args.parts.split(",") if p]
    live_modes = [m for m in args.live_modes.split(",") if m]
    stream_modes = [m for m in args.stream_modes.split(",") if m]
    for m in live_modes + stream_modes:
        if m not in LIVE_MODES + STREAM_MODES:
            ap.error(f"unknown mode {m}")
    if "direct" not in live_modes:
        ap.error("--live-modes: direct is the reference")
    if not {"socat", "socat-1M"} <= set(stream_modes):
        ap.error("--stream-modes: socat and socat-1M are the references")
    for p in parts:
        if p not in ("live", "stream"):
            ap.error(f"unknown part {p}")

    migproxy = os.path.join(args.build, "src", "migproxy")
    workload = os.path.join(args.build, "samples", "workload",
                            "workload.elf")
    run_root = args.run_dir or tempfile.mkdtemp(prefix="bench-relay-")
    os.makedirs(run_root, exist_ok=True)
    pidfile = (os.environ.get("MP_BENCH_PIDFILE")
               or os.path.join(run_root, "pids"))

    # SIGTERM/SIGHUP end the run like ^C does: through the finally below
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    results = {"machine": machine_info(args.build, args.commit)}
    log(f"machine: {results['machine']}")

    def save():
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)

    plain = plain_options(migproxy)
    results["relay_plain_options"] = plain
    procs = Procs(pidfile)
    t_start = time.monotonic()
    try:
        if "stream" in parts:
            path = ensure_stream(args, workload)
            size = os.path.getsize(path)
        if "live" in parts:
            lmodes = [m for m in LIVE_MODES if m in live_modes
                      and (m != "relay-plain" or plain)]
            live = {"modes": lmodes, "setup": f"-m {args.guest_ram}, -append "
                             f"'{args.workload}', max-bandwidth "
                             f"{args.max_bandwidth}, downtime-limit "
                             f"{args.downtime_limit} ms, settle "
                             f"{args.settle} s",
                    "runs": []}
            results["live"] = live
            for i in range(args.runs):
                for mode in rotate(lmodes, i):
                    run_dir = os.path.join(run_root, f"live-{i}-{mode}")
                    os.makedirs(run_dir, exist_ok=True)
                    log(f"live run {i + 1}/{args.runs}: {mode}")
                    try:
                        r = live_run(args, mode, run_dir, procs, migproxy,
                                     workload)
                    except Exception as e:  # one failed run is a result
                        log(f"run failed: {e!r} (logs in {run_dir})")
                        r = {"mode": mode, "error": str(e)}
                    finally:
                        procs.stop_all()
                    r["run"] = i
                    live["runs"].append(r)
                    save()
            live["summary"] = summarize(live["runs"], lmodes, "total_ms")
            live["paired"] = {f"{m} / direct": paired(live["runs"],
                                                      "total_ms", m, "direct")
                              for m in lmodes if m != "direct"}
            if "relay-plain" in lmodes:
                live["paired"]["relay / relay-plain"] = paired(
                    live["runs"], "total_ms", "relay", "relay-plain")
            live["seconds"] = round(time.monotonic() - t_start, 1)
        if "stream" in parts:
            t1 = time.monotonic()
            log(f"stream: {path}, {size / 1e9:.3f} GB; warming the page "
                f"cache")
            warm(path)
            modes = [m for m in STREAM_MODES if m in stream_modes
                     and (m != "relay-plain" or plain)]
            st = {"path": os.path.relpath(path, ROOT), "bytes": size,
                  "modes": modes, "runs": args.stream_runs,
                  "runs_list": []}
            results["stream"] = st
            run_dir = os.path.join(run_root, "stream")
            os.makedirs(run_dir, exist_ok=True)
            for i in range(args.stream_runs):
                log(f"stream run {i + 1}/{args.stream_runs}")
                for mode in rotate(modes, i):
                    try:
                        r = stream_run(args, mode, path, size, run_dir,
                                       procs, migproxy)
                    except Exception as e:
                        log(f"run failed: {e!r} (logs in {run_dir})")
                        r = {"mode": mode, "error": str(e)}
                    finally:
                        procs.stop_all()
                    r["run"] = i
                    st["runs_list"].append(r)
                    save()
            st["runs"] = st.pop("runs_list")
            st["runs_per_mode"] = args.stream_runs
            st["summary"] = summarize(st["runs"], modes, "gb_s")
            pairs = [("relay", "socat"), ("relay", "socat-1M"),
                     ("relay-plain", "socat-1M"), ("splice", "socat-1M"),
                     ("relay", "relay-plain")]
            st["paired"] = {f"{p[0]} / {p[1]}": paired(st["runs"], "gb_s",
                                                       *p)
                            for p in pairs if p[0] in modes}
            st["seconds"] = round(time.monotonic() - t1, 1)
    finally:
        procs.stop_all()
        if not args.keep and not args.run_dir:
            subprocess.run(["rm", "-rf", run_root])
        else:
            log(f"logs in {run_root}")
    results["machine"]["loadavg_end"] = \
        open("/proc/loadavg").read().split()[:3]
    results["seconds"] = round(time.monotonic() - t_start, 1)
    save()
    if "stream" in results:
        results["stream"]["runs_per_mode"] = args.stream_runs
    report(results)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt as e:
        # everything started is ended by now (the finally in main)
        log(f"interrupted ({e or 'SIGINT'}); every process it started "
            "is ended")
        sys.exit(130)
