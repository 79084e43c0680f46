#!/usr/bin/env python3
"""bench-postcopy.py: how long post-copy page requests block the guest's vCPU.

Called by bench/bench-postcopy.sh, which builds the guest
(samples/linux-guest/build.sh) and fetches QEMU 10.0 first.

Setup (one run):
  scripts/netns-link.sh up: namespaces mp-src and mp-dst joined by a veth
  pair shaped with tbf to 100 Mbit/s each way (see that script for burst
  and latency).
  destination  ip netns exec mp-dst qemu ... -incoming defer
               capabilities postcopy-ram, postcopy-blocktime
               [, postcopy-preempt]; migrate-incoming tcp:10.253.0.2:PORT
  source       ip netns exec mp-src qemu ... (the Linux guest, 512 MiB;
               its init fills 300 MiB of tmpfs, says READY, then every
               second rewrites 64 random pages (--pattern rand, default)
               or the first 4 MiB of the next file (--pattern seq), and
               md5-checks one file every 10th second)
               capabilities postcopy-ram [, postcopy-preempt];
               migrate tcp:10.253.0.2:PORT, or through the relay (below);
               migrate-start-postcopy 2 s after migrate.
  result       destination query-migrate (status completed):
               postcopy-blocktime, postcopy-vcpu-blocktime (ms);
               source query-migrate: ram.postcopy-requests;
               blocked ms per request = sum(postcopy-vcpu-blocktime) /
               postcopy-requests (one vCPU, so also postcopy-blocktime /
               postcopy-requests).
  latency      the destination runs with trace events (-trace, -D):
               postcopy_ram_fault_thread_request to postcopy_place_page
               of the same page gives each request's latency (p50/p90/p99).
  check        the guest must go on ticking on the destination, and pass
               an md5 check of a file, after completion.

Relay hook: --relay 'CMD' runs CMD (split like a shell would, no shell) in
the source namespace after the destination listens; {listen_host},
{listen_port}, {to_host} and {to_port} in CMD are replaced, e.g.
  --relay 'build/src/migproxy relay --listen {listen_host}:{listen_port}
           --to {to_host}:{to_port} --report {run_dir}/report.json'
With {listen_unix} in CMD (a path in the run's folder: `--listen
unix:{listen_unix}`) the source migrates to unix:PATH instead.
The source then migrates to tcp:127.0.0.1:LISTEN_PORT inside mp-src, and
the relay's upstream connections cross the shaped link, so the relay sits
in front of the bottleneck, where pacing and priority can act.  A run with
--relay is labelled "relay" (or --label).

Pair hook: --dest-cmd 'CMD' runs CMD in the destination namespace before
--relay's command (`migproxy dest`, the far end of the tunnel), with
{listen_host} and {tunnel_port} (where it listens), {to_host}:{to_port}
(the destination QEMU), {src_host} (the source namespace's address) and
{run_dir}; --relay's CMD then gets {tunnel_host}:{tunnel_port} too
(`migproxy source --peer {tunnel_host}:{tunnel_port}`).

Every process is started with a recorded pid (written to RUN_DIR/pids for
bench-postcopy.sh's trap) and ended by that pid: QMP quit, then SIGTERM,
then SIGKILL.  The namespaces are taken down at the end unless --keep-net.

Python standard library only.
"""
import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Qmp  # noqa: E402  (bench/qmp.py)
NETNS_LINK = os.path.join(ROOT, "scripts", "netns-link.sh")
QEMUS = {
    # version: (argv prefix, machine type)
    "7.2": (["/usr/bin/qemu-system-x86_64"], "pc-q35-7.2"),
    "10.0": ([os.path.join(ROOT, "scripts", "qemu10")], "pc-q35-10.0"),
}
GUEST_MEM = "512"
NS_SRC = os.environ.get("MP_NS_SRC", "mp-src")
NS_DST = os.environ.get("MP_NS_DST", "mp-dst")
NET_PREFIX = os.environ.get("MP_NET_PREFIX", "10.253.0")
DST_ADDR = NET_PREFIX + ".2"
# Destination trace events for the latency of each page request: from the
# fault thread sending REQ_PAGES to the page being placed.
TRACE_EVENTS = ["postcopy_ram_fault_thread_request", "postcopy_place_page",
                "postcopy_place_page_zero"]


def log(*a):
    print("bench-postcopy:", *a, file=sys.stderr, flush=True)


class Procs:
    """Processes of this run, ended by pid in reverse start order."""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.procs = []  # (name, Popen, Qmp or None)

    def start(self, name, argv, **kw):
        log(f"start {name}: {' '.join(shlex.quote(a) for a in argv)}")
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, **kw)
        self.procs.append([name, p, None])
        # pid, start time (clock ticks since boot, /proc/PID/stat field 22)
        # and name: bench-postcopy.sh's trap ends only a process whose pid
        # and start time both match, never a reused pid.
        try:
            with open(f"/proc/{p.pid}/stat") as f:
                start = f.read().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            start = "?"
        with open(self.pidfile, "a") as f:
            f.write(f"{p.pid} {start} {name}\n")
        return p

    def set_qmp(self, p, qmp):
        for e in self.procs:
            if e[1] is p:
                e[2] = qmp

    def stop_all(self):
        for name, p, qmp in reversed(self.procs):
            if p.poll() is None and qmp is not None:
                try:
                    qmp.cmd("quit")
                except (OSError, RuntimeError, ValueError):
                    pass
            if qmp is not None:
                qmp.close()
            for sig, wait in ((None, 5), (signal.SIGTERM, 5),
                              (signal.SIGKILL, 5)):
                if sig is not None and p.poll() is None:
                    try:
                        os.kill(p.pid, sig)
                    except ProcessLookupError:
                        pass
                try:
                    p.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        self.procs = []


def serial_lines(path):
    try:
        with open(path, errors="replace") as f:
            return [l.rstrip("\n") for l in f if l.startswith("mp-guest: ")]
    except FileNotFoundError:
        return []


def wait_for(pred, timeout, what, procs=()):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: process {p.pid} exited "
                                   f"with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out after {timeout} s")
        time.sleep(0.1)


def kv(line):
    """'mp-guest: tick n=3 check=ok t=1.5' -> {'n': '3', ...}."""
    out = {}
    for w in line.split():
        if "=" in w:
            k, v = w.split("=", 1)
            out[k] = v
    return out


def ticks(path):
    return [kv(l) for l in serial_lines(path) if l.startswith("mp-guest: tick ")]


def listening(ns, port):
    r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hltn",
                        f"sport = :{port}"], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() != ""


class NetSampler(threading.Thread):
    """Every second, while the migration runs: the TCP sockets of both
    sides (ss -tinm: cwnd, rtt, unacked and not-sent bytes, send buffer;
    the destination's after a line '--- dst', where Recv-Q shows what
    the destination QEMU has not read yet) and tbf's backlog on both veth
    ends, into RUN_DIR/net.log.  It only runs short commands; nothing is
    left running."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()

    def run(self):
        t0 = time.monotonic()
        with open(self.path, "w") as f:
            while not self.stop.is_set():
                f.write(f"=== t={time.monotonic() - t0:.1f}\n")
                for argv in (["ip", "netns", "exec", NS_SRC, "ss", "-tinmH"],
                             ["echo", "--- dst"],
                             ["ip", "netns", "exec", NS_DST, "ss", "-tinmH"],
                             ["ip", "netns", "exec", NS_SRC, "tc", "-s",
                              "qdisc", "show", "dev", "mp-veth-s"],
                             ["ip", "netns", "exec", NS_DST, "tc", "-s",
                              "qdisc", "show", "dev", "mp-veth-d"]):
                    r = subprocess.run(argv, capture_output=True, text=True,
                                       timeout=10)
                    f.write(r.stdout)
                f.flush()
                self.stop.wait(1.0)


def qemu_argv(version, ns, run_dir, side, guest, append):
    prefix, machine = QEMUS[version]
    return (["ip", "netns", "exec", ns] + prefix + [
        "-machine", machine, "-accel", "tcg", "-m", GUEST_MEM, "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-kernel", os.path.join(guest, "vmlinuz"),
        "-initrd", os.path.join(guest, "initramfs.cpio.gz"),
        "-append", append,
        "-serial", f"file:{run_dir}/{side}.serial",
        "-qmp", f"unix:{run_dir}/{side}.qmp,server=on,wait=off",
    ])


def one_run(args, version, preempt, run_dir, port, procs):
    """Returns a dict of results; raises on failure."""
    guest = args.guest
    append = ("console=ttyS0 quiet "
              f"mp_fill={args.fill} mp_pattern={args.pattern} "
              f"mp_rewrite={args.rewrite} mp_pages={args.pages} "
              f"mp_check=1 mp_check_every={args.check_every}")
    res = {"qemu": version, "preempt": preempt, "pattern": args.pattern,
           "label": args.label or ("relay" if args.relay else "direct")}

    # Destination first: it takes no CPU until the migration starts.
    dst_argv = qemu_argv(version, NS_DST, run_dir, "dst", guest, append)
    if args.trace:
        dst_argv += ["-msg", "timestamp=on", "-D", f"{run_dir}/dst.trace"]
        for ev in TRACE_EVENTS:
            dst_argv += ["-trace", ev]
    dst = procs.start("dst-qemu", dst_argv + ["-incoming", "defer"])
    t_boot = time.monotonic()
    src = procs.start("src-qemu", qemu_argv(version, NS_SRC, run_dir, "src",
                                            guest, append))
    src_serial = f"{run_dir}/src.serial"
    dst_serial = f"{run_dir}/dst.serial"
    ready = wait_for(lambda: next((l for l in serial_lines(src_serial)
                                   if " READY " in l), None),
                     args.boot_timeout, "source guest READY", (src, dst))
    res["boot_to_ready_s"] = round(time.monotonic() - t_boot, 2)
    res["ready_line"] = ready
    log(f"{ready} (boot to READY {res['boot_to_ready_s']} s)")
    # A few ticks, so that the rewrite loop is what the guest is doing.
    wait_for(lambda: len(ticks(src_serial)) >= args.settle_ticks, 60,
             "source guest ticks", (src, dst))

    qd = Qmp(f"{run_dir}/dst.qmp")
    procs.set_qmp(dst, qd)
    qs = Qmp(f"{run_dir}/src.qmp")
    procs.set_qmp(src, qs)

    caps_src = [{"capability": "postcopy-ram", "state": True}]
    if preempt:
        caps_src.append({"capability": "postcopy-preempt", "state": True})
    caps_dst = caps_src + [{"capability": "postcopy-blocktime",
                            "state": True}]
    qd.cmd("migrate-set-capabilities", capabilities=caps_dst)
    qs.cmd("migrate-set-capabilities", capabilities=caps_src)
    qd.cmd("migrate-incoming", uri=f"tcp:{DST_ADDR}:{port}")
    res["src_parameters"] = {k: v for k, v in
                             qs.cmd("query-migrate-parameters").items()
                             if k in ("max-bandwidth",
                                      "max-postcopy-bandwidth",
                                      "downtime-limit")}

    uri = f"tcp:{DST_ADDR}:{port}"
    tport = port + 1000
    if args.dest_cmd:
        subst = {"listen_host": DST_ADDR, "tunnel_port": str(tport),
                 "to_host": DST_ADDR, "to_port": str(port),
                 "src_host": NET_PREFIX + ".1", "run_dir": run_dir}
        cmd = [w.format(**subst) for w in shlex.split(args.dest_cmd)]
        far = procs.start("dest", ["ip", "netns", "exec", NS_DST] + cmd,
                          stdout=open(f"{run_dir}/dest.log", "wb"),
                          stderr=subprocess.STDOUT)
        wait_for(lambda: listening(NS_DST, tport), 30, "dest listening",
                 (far,))
    if args.relay:
        lport = port + 1
        lunix = os.path.join(run_dir, "listen.sock")
        subst = {"listen_host": "127.0.0.1", "listen_port": str(lport),
                 "listen_unix": lunix,
                 "to_host": DST_ADDR, "to_port": str(port),
                 "tunnel_host": DST_ADDR, "tunnel_port": str(tport),
                 "run_dir": run_dir}
        cmd = [w.format(**subst) for w in shlex.split(args.relay)]
        relay = procs.start("relay", ["ip", "netns", "exec", NS_SRC] + cmd,
                            stdout=open(f"{run_dir}/relay.log", "wb"),
                            stderr=subprocess.STDOUT)
        if "{listen_unix}" in args.relay:
            # the source QEMU migrates over a Unix socket (unix:PATH)
            wait_for(lambda: os.path.exists(lunix), 30, "relay listening",
                     (relay,))
            uri = f"unix:{lunix}"
        else:
            wait_for(lambda: listening(NS_SRC, lport), 30, "relay listening",
                     (relay,))
            uri = f"tcp:127.0.0.1:{lport}"

    sampler = NetSampler(f"{run_dir}/net.log")
    sampler.start()
    try:
        return migrate(args, res, qs, qd, dst, uri, run_dir)
    finally:
        sampler.stop.set()
        sampler.join()


def migrate(args, res, qs, qd, dst, uri, run_dir):
    dst_serial = f"{run_dir}/dst.serial"
    t0 = time.monotonic()
    qs.cmd("migrate", uri=uri)
    time.sleep(max(0.0, t0 + args.postcopy_after - time.monotonic()))
    qs.cmd("migrate-start-postcopy")
    t_pc = time.monotonic()
    res["start_postcopy_at_s"] = round(t_pc - t0, 2)

    t_active = None
    deadline = t0 + args.migrate_timeout
    while True:
        s = qs.cmd("query-migrate")
        st = s.get("status")
        if st == "postcopy-active" and t_active is None:
            t_active = time.monotonic()
        # (QEMU 7.2 says completed a moment before it sets total-time:
        # a poll in between reads 0)
        if st in ("failed", "cancelled") or (st == "completed"
                                              and s.get("total-time")):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"source migration still {st} after "
                               f"{args.migrate_timeout} s")
        time.sleep(0.1)
    t_src_done = time.monotonic()
    if st != "completed":
        raise RuntimeError(f"source migration {st}: {s.get('error-desc', s)}")
    d = wait_for(lambda: (lambda r: r if r.get("status") in
                          ("completed", "failed") else None)(
                              qd.cmd("query-migrate")),
                 60, "destination completed", (dst,))
    if d.get("status") != "completed":
        raise RuntimeError(f"destination migration {d.get('status')}")

    ram = s.get("ram", {})
    res["src_status"] = s["status"]
    res["total_ms"] = s.get("total-time")
    res["downtime_ms"] = s.get("downtime")
    res["postcopy_active_after_s"] = (round(t_active - t0, 2)
                                      if t_active else None)
    res["postcopy_phase_s"] = (round(t_src_done - t_active, 2)
                               if t_active else None)
    res["ram"] = {k: ram.get(k) for k in
                  ("transferred", "normal", "duplicate", "postcopy-requests",
                   "precopy-bytes", "postcopy-bytes", "downtime-bytes",
                   "mbps")}
    req = ram.get("postcopy-requests") or 0
    bt = d.get("postcopy-blocktime")
    vbt = d.get("postcopy-vcpu-blocktime")
    res["requests"] = req
    res["blocktime_ms"] = bt
    res["vcpu_blocktime_ms"] = vbt
    if bt is None or vbt is None:
        raise RuntimeError("destination query-migrate has no "
                           f"postcopy-blocktime: {d}")
    res["ms_per_request"] = round(sum(vbt) / req, 2) if req else None
    # Any extra fields newer QEMUs report (10.1+: postcopy latency).
    res["dst_extra"] = {k: v for k, v in d.items()
                        if k.startswith("postcopy-") and k not in
                        ("postcopy-blocktime", "postcopy-vcpu-blocktime")}

    if args.trace:
        res["request_latency_ms"] = request_latency(f"{run_dir}/dst.trace")

    # The guest must still be alive on the destination, and check a file
    # (md5) after the migration has completed.
    n0 = len(ticks(dst_serial))

    def checked_after():
        t = ticks(dst_serial)
        ok = len(t) >= n0 + args.after_ticks and any(
            x.get("check") in ("ok", "FAIL") for x in t[n0:])
        return t if ok else None
    after = wait_for(checked_after, 60 + 3 * args.check_every,
                     "destination guest ticking and checking after "
                     "migration", (dst,))
    fails = [t for t in after if t.get("check") == "FAIL"]
    res["dst_ticks"] = len(after)
    res["dst_last_tick"] = after[-1]
    res["guest_check"] = "FAIL" if fails else "ok"
    res["guest_checks_on_dst"] = sum(1 for t in after
                                     if t.get("check") in ("ok", "FAIL"))
    if fails:
        raise RuntimeError(f"guest self-check failed on the destination: "
                           f"{fails[0]}")
    lat = res.get("request_latency_ms") or {}
    log(f"{res['qemu']} {'preempt' if res['preempt'] else 'plain'}: "
        f"requests={req} blocktime={bt} ms vcpu={vbt} -> "
        f"{res['ms_per_request']} ms/request; total {res['total_ms']} ms, "
        f"post-copy phase {res['postcopy_phase_s']} s; request latency "
        f"p50 {lat.get('p50')} p99 {lat.get('p99')} ms "
        f"({lat.get('matched')} of {lat.get('requests')} matched)")
    return res


TRACE_RE = re.compile(r"(\d+)@(\d+)\.(\d+):(\w+) (.*)")


def pct(xs, q):
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, int(round(q / 100 * len(xs))) - 1))]


def request_latency(path):
    """Latency of each page request on the destination, from its trace:
    postcopy_ram_fault_thread_request (HVA=...; the fault thread then sends
    REQ_PAGES) to postcopy_place_page[_zero] of that host page.  A page
    requested again before it arrives counts once, from the first request.
    Returns ms statistics, or None without a trace; `first_s` and `after_s`
    split them at one second after the first request (the switch's queues
    drain in that second)."""
    pending = {}
    lat = []
    first, after = [], []
    t_first = None
    nreq = 0
    try:
        f = open(path, errors="replace")
    except FileNotFoundError:
        return None
    with f:
        for line in f:
            m = TRACE_RE.search(line)
            if not m:
                continue
            t = int(m.group(2)) + int(m.group(3)) / 1e6
            ev, rest = m.group(4), m.group(5)
            if ev == "postcopy_ram_fault_thread_request":
                a = re.search(r"HVA=(0x[0-9a-fA-F]+)", rest)
                if a:
                    nreq += 1
                    t_first = t if t_first is None else t_first
                    pending.setdefault(int(a.group(1), 16) & ~0xfff, t)
            elif ev in ("postcopy_place_page", "postcopy_place_page_zero"):
                a = re.search(r"host=(0x[0-9a-fA-F]+)", rest)
                if a:
                    t0 = pending.pop(int(a.group(1), 16) & ~0xfff, None)
                    if t0 is not None:
                        lat.append((t - t0) * 1000)
                        (first if t0 < t_first + 1 else after).append(
                            lat[-1])
    r = latency_stats(lat)
    r["requests"] = nreq
    r["first_s"] = latency_stats(first)
    r["after_s"] = latency_stats(after)
    return r


def latency_stats(lat):
    """matched, mean, p50, p90, p99, max of latencies in ms."""
    lat = sorted(lat)
    r = {"matched": len(lat)}
    if lat:
        r.update({"mean": round(sum(lat) / len(lat), 2),
                  "p50": round(pct(lat, 50), 2),
                  "p90": round(pct(lat, 90), 2),
                  "p99": round(pct(lat, 99), 2),
                  "max": round(lat[-1], 2)})
    return r


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def lat_cell(rs):
    """Medians over the runs of each run's p50, p90, p99."""
    ls = [r.get("request_latency_ms") or {} for r in rs]
    vals = [median([l.get(k) for l in ls]) for k in ("p50", "p90", "p99")]
    if all(v is None for v in vals):
        return "-"
    return " / ".join(fmt(v) for v in vals)


def table(results):
    rows = ["| QEMU | case | runs | requests | blocked ms | "
            "**blocked ms / request** (median, min-max) | "
            "request latency ms p50 / p90 / p99 | post-copy phase s | "
            "total s | boot to READY s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    keys = []
    for r in results:
        k = (r["qemu"], r["label"], r["preempt"], r.get("pattern", "seq"))
        if k not in keys:
            keys.append(k)
    for k in keys:
        def key(r):
            return (r["qemu"], r["label"], r["preempt"],
                    r.get("pattern", "seq"))
        rs = [r for r in results if key(r) == k and "error" not in r]
        nerr = sum(1 for r in results if key(r) == k and "error" in r)
        case = k[1] + (" + preempt" if k[2] else "") + f", {k[3]}"
        mpr = [r["ms_per_request"] for r in rs if r["ms_per_request"]]
        rng = f" ({min(mpr):.1f}-{max(mpr):.1f})" if mpr else ""
        runs = f"{len(rs)}" + (f" (+{nerr} failed)" if nerr else "")
        tot = median([r["total_ms"] for r in rs])
        rows.append(
            f"| {k[0]} | {case} | {runs} | "
            f"{fmt(median([r['requests'] for r in rs]))} | "
            f"{fmt(median([r['blocktime_ms'] for r in rs]))} | "
            f"**{fmt(median(mpr))}**{rng} | "
            f"{lat_cell(rs)} | "
            f"{fmt(median([r['postcopy_phase_s'] for r in rs]))} | "
            f"{fmt(tot / 1000 if tot is not None else None)} | "
            f"{fmt(median([r['boot_to_ready_s'] for r in rs]))} |")
    return "\n".join(rows)


def netns(cmd):
    subprocess.run([NETNS_LINK, cmd], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--guest", required=True,
                    help="folder with vmlinuz and initramfs.cpio.gz")
    ap.add_argument("--qemu", default="7.2,10.0",
                    help="comma-separated versions (7.2, 10.0)")
    ap.add_argument("--cases", default="plain,preempt",
                    help="comma-separated: plain, preempt")
    ap.add_argument("--runs", type=int, default=3,
                    help="runs per QEMU and case (alternating)")
    ap.add_argument("--fill", type=int, default=300, help="guest fill, MiB")
    ap.add_argument("--pattern", choices=("seq", "rand"), default="rand",
                    help="guest rewrite pattern (samples/linux-guest)")
    ap.add_argument("--rewrite", type=int, default=4,
                    help="seq: guest rewrite, MiB per tick (second)")
    ap.add_argument("--pages", type=int, default=64,
                    help="rand: pages rewritten per tick")
    ap.add_argument("--check-every", type=int, default=10,
                    help="the guest md5-checks one file every N ticks")
    ap.add_argument("--no-trace", dest="trace", action="store_false",
                    help="no destination trace (request latency)")
    ap.add_argument("--postcopy-after", type=float, default=2.0,
                    help="seconds from migrate to migrate-start-postcopy")
    ap.add_argument("--settle-ticks", type=int, default=3)
    ap.add_argument("--after-ticks", type=int, default=3)
    ap.add_argument("--boot-timeout", type=float, default=180)
    ap.add_argument("--migrate-timeout", type=float, default=400)
    ap.add_argument("--relay", default="",
                    help="relay command template, run in the source "
                         "namespace (see the module doc)")
    ap.add_argument("--dest-cmd", default="",
                    help="command run in the destination namespace before "
                         "--relay's (the pair's dest; see the module doc)")
    ap.add_argument("--label", default="", help="case label in the table")
    ap.add_argument("--port", type=int, default=47000)
    ap.add_argument("--run-dir", default="",
                    help="logs, serial files, QMP sockets (default: a "
                         "temporary folder, removed unless --keep)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--keep-net", action="store_true",
                    help="leave the namespaces up at the end")
    ap.add_argument("--json", default="", help="write all results here")
    args = ap.parse_args()

    versions = [v for v in args.qemu.split(",") if v]
    for v in versions:
        if v not in QEMUS:
            ap.error(f"unknown QEMU version {v}")
    cases = [c for c in args.cases.split(",") if c]
    for c in cases:
        if c not in ("plain", "preempt"):
            ap.error(f"unknown case {c}")

    run_root = args.run_dir or tempfile.mkdtemp(prefix="bench-postcopy-")
    os.makedirs(run_root, exist_ok=True)
    pidfile = (os.environ.get("MP_BENCH_PIDFILE")
               or os.path.join(run_root, "pids"))

    # SIGTERM/SIGHUP end the run like ^C does: through the finally below.
    def on_signal(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    results = []
    procs = Procs(pidfile)
    netns("up")
    try:
        port = args.port
        for i in range(args.runs):
            for v in versions:
                for c in cases:
                    run_dir = os.path.join(run_root, f"{v}-{c}-{i}")
                    os.makedirs(run_dir, exist_ok=True)
                    log(f"run {i + 1}/{args.runs}: QEMU {v}, {c}")
                    try:
                        r = one_run(args, v, c == "preempt", run_dir, port,
                                    procs)
                    except Exception as e:  # one failed run is a result
                        log(f"run failed: {e!r} (logs in {run_dir})")
                        r = {"qemu": v, "preempt": c == "preempt",
                             "pattern": args.pattern,
                             "label": args.label or
                             ("relay" if args.relay else "direct"),
                             "error": str(e)}
                    finally:
                        procs.stop_all()
                    r["run"] = i
                    # what the relay chose (queue, pace), if it reported
                    try:
                        with open(os.path.join(run_dir, "report.json")) as f:
                            rep = json.load(f)
                        r["relay_priority"] = rep.get("priority")
                        # the pair's source: its link rate and lanes
                        if "tunnel" in rep:
                            r["tunnel"] = {k: v for k, v in
                                           rep["tunnel"].items()
                                           if k != "channels"}
                            # requested pages lifted (docs/tunnel.md)
                            for ch in rep["tunnel"].get("channels", []):
                                lift = (ch.get("to_dst", {})
                                        .get("pages", {}).get("lift"))
                                if ch.get("kind") == "main" and lift:
                                    r["tunnel"]["lift"] = lift
                    except (OSError, ValueError):
                        pass
                    results.append(r)
                    port += 2
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump(results, f, indent=1)
    finally:
        procs.stop_all()
        if not args.keep_net:
            netns("down")
        if not args.keep and not args.run_dir:
            subprocess.run(["rm", "-rf", run_root])
        else:
            log(f"logs in {run_root}")
    print(table(results))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
