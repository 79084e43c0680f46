#!/usr/bin/env python3
"""bench-pair.py: migrations over a shaped link, QEMU's own options against
the pair (`migproxy source` + `migproxy dest`), issue 10 item 10.

Called by bench/bench-pair.sh (see docs/benchmarks.md, "The pair over a
shaped link").

Setup: scripts/netns-link.sh up, with this script's namespace names and
prefix (MP_NS_SRC, MP_NS_DST, MP_NET_PREFIX; defaults mpt-src, mpt-dst,
10.254.7): two namespaces joined by a veth pair, tbf on both ends at each
--rates value (100mbit, 1gbit).  The source QEMU runs in the source
namespace, the destination QEMU in the destination one; in mode pair,
`migproxy source` runs next to the source QEMU and `migproxy dest` next to
the destination QEMU, so only the tunnel crosses the link.

Workloads (--workloads):
  comp    the sample guest (samples/workload) dirtying compressible pages:
          -append "mem=M rate=R zero=0 dup=0 comp=100 rand=0"
  rand    the same dirtying random pages (rand=100)
  linux   the Linux guest of samples/linux-guest (mp_fill=--linux-fill MiB
          of random data in a tmpfs, then 64 scattered pages rewritten a
          second), --linux-guest DIR (samples/linux-guest/build.sh's output)
  linux-text  the same guest with log-like text instead of random data
          (mp_data=text: zstd -19 --long leaves about 0.16 of it), a guest
          whose memory compresses, as most do

Modes (--modes), alternated within each round (the order rotates every
round), each in a fresh pair of QEMUs:
  direct        QEMU's defaults, migrate tcp:DST:PORT
  xbzrle        capability xbzrle on both sides (default cache size)
  multifd-zstd  capability multifd, multifd-channels 2,
                multifd-compression zstd, on both sides
  pair          migproxy dest --listen DST:T --to 127.0.0.1:PORT --allow SRC
                --once; migproxy source --listen 127.0.0.1:P --peer DST:T
                --once; migrate tcp:127.0.0.1:P, with max-bandwidth raised to
                --pair-max-bandwidth (docs/tunnel.md, "Use": QEMU counts
                stream bytes before the tunnel compresses them)
  pair-before   the same with another build of migproxy, --before-migproxy
                (e.g. main's, to compare a change with what it changes in
                the same run: git archive main | tar -x -C /tmp/before;
                meson setup /tmp/before/build /tmp/before; ninja -C
                /tmp/before/build src/migproxy)
  pair-multifd  mode pair with QEMU's multifd on (multifd-channels as
                multifd-zstd, multifd-compression none: the pair
                compresses the channels' pages)
  splice-pair   the cheapest pair of middles, the floor of any pair on this
                machine: bench/splice-forward (splice() through a pipe,
                nothing parsed, nothing compressed) on each side of the
                link where the pair's two processes run, one connection
                (QEMU's main channel), max-bandwidth as for pair

Per run: the source's query-migrate total-time and downtime (or "did not
finish" after --migrate-timeout: migrate_cancel); the end-to-end time,
from `migrate` to the destination's guest running (its QMP RESUME event,
as QEMU stamped it; the source completes once its last bytes are in its
socket, before they crossed the link) and the downtime to the
destination, from the source's STOP event to that RESUME (where an event
is missing: the destination's query-migrate saying completed, polled
every 20 ms); bytes on the link (the
source-side veth's tx and rx byte counters, Ethernet frames, so TCP/IP
headers included), and CPU seconds used during the migration by both QEMUs
(/proc/PID/stat) and by both migproxy processes (wait4(); in mode
splice-pair both splice-forward processes, in the same column); how the
link was used, from the source-side veth's tx counter every 10 ms
(written to RUN_DIR/link-trace.tsv): the share of the link's rate it
carried from `migrate` to the destination's completion (100 ms bins, each
counted at most full) and the time it carried under half of it ("idle":
the start, QEMU producing nothing the link could carry, the end).  In
the JSON only: the veth's packets each way (what came back is mostly the
receiver's ACKs) and, per middle, its user and kernel CPU seconds,
voluntary and involuntary context switches and minor faults (wait4()).

The bound: per workload, the first completed run's destination memory
(pmemsave of the whole RAM, the guest stopped), compressed with
`zstd -19 --long=27` after the last run (--bound-level); bound seconds =
compressed bytes * 8 / link rate.

Prints a markdown table per rate and workload on stdout, progress on
stderr; --json writes every raw number.  Every process is started with a
recorded pid (also in $MP_BENCH_PIDFILE for bench-pair.sh's trap) and
ended by that pid.  Python standard library only; the process and QMP
helpers are bench-relay.py's.
"""
import argparse
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "bench_relay", os.path.join(ROOT, "bench", "bench-relay.py"))
br = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(br)

NETNS_LINK = os.path.join(ROOT, "scripts", "netns-link.sh")
NS_SRC = os.environ.setdefault("MP_NS_SRC", "mpt-src")
NS_DST = os.environ.setdefault("MP_NS_DST", "mpt-dst")
PREFIX = os.environ.setdefault("MP_NET_PREFIX", "10.254.7")
SRC_ADDR, DST_ADDR = PREFIX + ".1", PREFIX + ".2"
DEV_SRC = "mp-veth-s"  # scripts/netns-link.sh's name
QEMUS = {
    "7.2": (["/usr/bin/qemu-system-x86_64"], "pc-q35-7.2"),
    "10.0": ([os.path.join(ROOT, "scripts", "qemu10")], "pc-q35-10.0"),
}
MODES = ("direct", "xbzrle", "multifd-zstd", "pair", "pair-before",
         "splice-pair", "pair-multifd")
DEFAULT_MODES = MODES[:5]
PAIR_MODES = ("pair", "pair-before", "pair-multifd")  # migproxy's pair
WORKLOADS = ("comp", "rand", "linux", "linux-text")
LINUX = ("linux", "linux-text")


def log(*a):
    print("bench-pair:", *a, file=sys.stderr, flush=True)


br.log = log  # its Procs say what they start under this script's name


def rate_bps(rate):
    """tc's rate syntax (100mbit, 1gbit, 12mbps) in bits per second."""
    r = rate.lower()
    for suffix, mult in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3),
                         ("gbps", 8e9), ("mbps", 8e6), ("kbps", 8e3),
                         ("bit", 1), ("bps", 8)):
        if r.endswith(suffix):
            return float(r[: -len(suffix)]) * mult
    return float(r)


def link_up(rate):
    env = dict(os.environ, MP_NET_RATE=rate)
    subprocess.run([NETNS_LINK, "up"], check=True, env=env)


def link_down():
    subprocess.run([NETNS_LINK, "down"], check=False)


def link_bytes():
    """(tx bytes, rx bytes, tx packets, rx packets) of the source
    namespace's veth end (rx packets: mostly the receiver's ACKs)."""
    out = subprocess.run(
        ["ip", "netns", "exec", NS_SRC, "cat"] +
        [f"/sys/class/net/{DEV_SRC}/statistics/{c}" for c in (
            "tx_bytes", "rx_bytes", "tx_packets", "rx_packets")],
        check=True, capture_output=True, text=True).stdout.split()
    return tuple(int(x) for x in out)


class LinkTrace:
    """The source-side veth's tx byte counter every 10 ms while a
    migration runs (read through /proc/PID/net/dev of a process in the
    source namespace: no process started per sample), so that a run says
    when its link was idle, not only how full it was on average."""

    def __init__(self, pid, path):
        self.path = f"/proc/{pid}/net/dev"
        self.samples = []
        self.stop_ev = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def read(self):
        with open(self.path) as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name.strip() == DEV_SRC:
                    return int(rest.split()[8])
        raise RuntimeError(f"{DEV_SRC} not in {self.path}")

    def run(self):
        while not self.stop_ev.is_set():
            try:
                self.samples.append((time.monotonic(), self.read()))
            except (OSError, RuntimeError, ValueError):
                return
            self.stop_ev.wait(0.01)

    def halt(self):
        self.stop_ev.set()
        self.thread.join()

    def stop(self, t0, rate, out_path):
        """Stops; writes the trace (s since `migrate`, bytes since) and
        returns the link's use in 100 ms bins from `migrate` to the last
        sample: the time the link carried less than half of `rate`, and
        the time-weighted share of `rate` it carried."""
        self.halt()
        s = self.samples
        if len(s) < 2:
            return {}
        b0 = s[0][1]
        with open(out_path, "w") as f:
            f.write(f"# migrate at {t0:.3f} s (CLOCK_MONOTONIC)\n")
            for t, b in s:
                f.write(f"{t - t0:.3f}\t{b - b0}\n")
        bins, full, idle = 0, 0.0, 0
        i, t = 0, s[0][0]
        while t + 0.1 <= s[-1][0]:
            while i + 1 < len(s) and s[i + 1][0] <= t:
                i += 1
            j = i
            while j + 1 < len(s) and s[j][0] < t + 0.1:
                j += 1
            dt = s[j][0] - s[i][0]
            if dt > 0:
                use = (s[j][1] - s[i][1]) * 8 / dt / rate
                bins += 1
                full += min(use, 1.0)
                idle += use < 0.5
            t += 0.1
        return {"link_use": round(full / bins, 3) if bins else None,
                "link_idle_s": round(idle * 0.1, 1)}


def qemu_argv(args, ns, run_dir, side, wl):
    prefix, machine = QEMUS[args.qemu]
    argv = ["ip", "netns", "exec", ns] + prefix + [
        "-machine", machine, "-accel", "tcg", "-smp", "1",
        "-nodefaults", "-no-user-config", "-display", "none",
        "-qmp", f"unix:{run_dir}/{side}.qmp,server=on,wait=off"]
    if wl in LINUX:
        data = "text" if wl == "linux-text" else "random"
        argv += ["-m", str(args.linux_ram),
                 "-kernel", os.path.join(args.linux_guest, "vmlinuz"),
                 "-initrd", os.path.join(args.linux_guest,
                                         "initramfs.cpio.gz"),
                 "-append", ("console=ttyS0 quiet "
                             f"mp_fill={args.linux_fill} mp_data={data} "
                             "mp_pattern=rand "
                             "mp_check=1 mp_check_every=10"),
                 "-serial", f"file:{run_dir}/{side}.con"]
    else:
        share = "comp=100 rand=0" if wl == "comp" else "comp=0 rand=100"
        argv += ["-m", str(args.guest_ram), "-kernel", args.workload,
                 "-append", (f"mem={args.guest_mem}M rate={args.dirty_rate}"
                             f" zero=0 dup=0 {share}"),
                 "-debugcon", f"file:{run_dir}/{side}.con"]
    return argv


def ready_line(wl, path):
    needle = " READY " if wl in LINUX else "workload: READY"
    return br.console_line(path, needle)


def wait_log(proc, path, needle, timeout):
    def seen():
        try:
            with open(path, errors="replace") as f:
                return needle in f.read()
        except FileNotFoundError:
            return False
    br.wait_for(seen, timeout, f"{proc.name}: {needle!r}", (proc,))


def migproxy_pair(args, procs, run_dir, qport, binary):
    """migproxy dest, then migproxy source (both `binary`); @return
    (dest, source, the port the source QEMU migrates to)."""
    tport, sport = br.free_port(), br.free_port()
    dst = procs.start("migproxy-dest", [
        "ip", "netns", "exec", NS_DST, binary, "dest",
        "--listen", f"{DST_ADDR}:{tport}", "--to", f"127.0.0.1:{qport}",
        "--allow", SRC_ADDR, "--once",
        "--report", f"{run_dir}/dest.json"] + args.dest_arg,
        log_to=f"{run_dir}/migproxy-dest.log")
    wait_log(dst, f"{run_dir}/migproxy-dest.log", "listening on", 30)
    src = procs.start("migproxy-source", [
        "ip", "netns", "exec", NS_SRC, binary, "source",
        "--listen", f"127.0.0.1:{sport}", "--peer", f"{DST_ADDR}:{tport}",
        "--once", "--no-progress",
        "--report", f"{run_dir}/source.json"] + args.source_arg,
        log_to=f"{run_dir}/migproxy-source.log")
    wait_log(src, f"{run_dir}/migproxy-source.log", "listening on", 30)
    return dst, src, sport


def splice_forward_binary():
    """bench/splice-forward.c compiled into build/bench/ (as
    bench-relay.sh does), again when the source is newer."""
    src = os.path.join(ROOT, "bench", "splice-forward.c")
    out = os.path.join(ROOT, "build", "bench", "splice-forward")
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(src):
        os.makedirs(os.path.dirname(out), exist_ok=True)
        subprocess.run(["cc", "-O2", "-Wall", "-o", out, src], check=True)
    return out


def wait_listening(ns, port, timeout):
    """Until something in namespace `ns` listens on TCP `port` (a probe
    connection would take splice-forward's one accept)."""
    def up():
        out = subprocess.run(
            ["ip", "netns", "exec", ns, "ss", "-Hltn", f"sport = :{port}"],
            capture_output=True, text=True).stdout
        return out.strip() or None
    br.wait_for(up, timeout, f"a listener on {ns} port {port}", ())


def splice_pair(procs, run_dir, qport):
    """splice-forward on the destination's side (DST:T to the destination
    QEMU), then on the source's (127.0.0.1:P to DST:T); @return (dest,
    source, P)."""
    binary = splice_forward_binary()
    tport, sport = br.free_port(), br.free_port()
    dst = procs.start("splice-dest", [
        "ip", "netns", "exec", NS_DST, binary, f"{DST_ADDR}:{tport}",
        f"127.0.0.1:{qport}"], log_to=f"{run_dir}/splice-dest.log")
    wait_listening(NS_DST, tport, 10)
    src = procs.start("splice-source", [
        "ip", "netns", "exec", NS_SRC, binary, f"127.0.0.1:{sport}",
        f"{DST_ADDR}:{tport}"], log_to=f"{run_dir}/splice-source.log")
    wait_listening(NS_SRC, sport, 10)
    return dst, src, sport


def set_caps(qmp, caps):
    if caps:
        qmp.cmd("migrate-set-capabilities", capabilities=[
            {"capability": c, "state": True} for c in caps])


def one_run(args, rate, wl, mode, run_dir, procs, bound):
    res = {"rate": rate, "workload": wl, "mode": mode}
    qport = br.free_port()
    dst = procs.start("dst-qemu", qemu_argv(args, NS_DST, run_dir, "dst", wl)
                      + ["-incoming", "defer"],
                      log_to=f"{run_dir}/dst.log")
    src = procs.start("src-qemu", qemu_argv(args, NS_SRC, run_dir, "src", wl),
                      log_to=f"{run_dir}/src.log")
    t0 = time.monotonic()
    res["ready"] = br.wait_for(lambda: ready_line(wl, f"{run_dir}/src.con"),
                               args.boot_timeout, "source READY", (src, dst))
    res["boot_to_ready_s"] = round(time.monotonic() - t0, 1)
    dst.qmp = br.Qmp(f"{run_dir}/dst.qmp")
    src.qmp = br.Qmp(f"{run_dir}/src.qmp")

    caps = {"xbzrle": ["xbzrle"], "multifd-zstd": ["multifd"],
            "pair-multifd": ["multifd"]}.get(mode, [])
    for q in (src.qmp, dst.qmp):
        set_caps(q, caps)
        if mode in ("multifd-zstd", "pair-multifd"):
            q.cmd("migrate-set-parameters", **{
                "multifd-channels": args.multifd_channels,
                "multifd-compression": "zstd" if mode == "multifd-zstd"
                                       else "none"})
    mids = ()
    if mode in PAIR_MODES:
        dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{qport}")
        mdst, msrc, sport = migproxy_pair(
            args, procs, run_dir, qport,
            args.before_migproxy if mode == "pair-before" else args.migproxy)
        mids = (mdst, msrc)
        uri = f"tcp:127.0.0.1:{sport}"
        src.qmp.cmd("migrate-set-parameters",
                    **{"max-bandwidth": args.pair_max_bandwidth})
    elif mode == "splice-pair":
        dst.qmp.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{qport}")
        sdst, ssrc, sport = splice_pair(procs, run_dir, qport)
        mids = (sdst, ssrc)
        uri = f"tcp:127.0.0.1:{sport}"
        src.qmp.cmd("migrate-set-parameters",
                    **{"max-bandwidth": args.pair_max_bandwidth})
    else:
        dst.qmp.cmd("migrate-incoming", uri=f"tcp:{DST_ADDR}:{qport}")
        uri = f"tcp:{DST_ADDR}:{qport}"
    time.sleep(args.settle)  # the guest dirtying at its rate

    link0 = link_bytes()
    trace = LinkTrace(src.pid, f"{run_dir}/link-trace.tsv")
    cpu0 = (br.proc_cpu_s(src.pid), br.proc_cpu_s(dst.pid))
    t_migrate = time.monotonic()
    wall_migrate = time.time()
    src.qmp.cmd("migrate", uri=uri)
    deadline = time.monotonic() + args.migrate_timeout
    while True:
        s = src.qmp.cmd("query-migrate")
        st = s.get("status")
        if st in ("failed", "cancelled") or (st == "completed"
                                              and s.get("total-time")):
            break
        if time.monotonic() > deadline:
            src.qmp.cmd("migrate_cancel")
            st = "timeout"
            break
        time.sleep(0.05)
    res["status"] = st
    ram = s.get("ram", {})
    res.update({"total_ms": s.get("total-time"),
                "downtime_ms": s.get("downtime"),
                "transferred": ram.get("transferred"),
                "dirty_syncs": ram.get("dirty-sync-count")})
    if st == "completed":
        # The source completes once its last bytes are in its socket: what
        # is still buffered on the way (the kernel's socket buffers; with
        # the pair also its queues) arrives later.  The migration is over
        # when the destination says so.
        d = br.wait_for(lambda: (lambda r: r if r.get("status") in (
            "completed", "failed") else None)(dst.qmp.cmd("query-migrate")),
            60, "destination completed", (dst,))
        res["end_to_end_ms"] = round((time.monotonic() - t_migrate) * 1000)
        res["downtime_e2e_ms"] = e2e_downtime(res)
        # exact, where both QEMUs said it: the source's STOP (the guest
        # paused for the switchover) to the destination's RESUME (it runs
        # there), both stamped by QEMU on this host's clock; polling
        # above only tells within its interval
        src.qmp.cmd("query-status")
        dst.qmp.cmd("query-status")
        t_stop = src.qmp.event_time("STOP", wall_migrate)
        t_resume = dst.qmp.event_time("RESUME", wall_migrate)
        if t_stop is not None and t_resume is not None:
            res["end_to_end_ms"] = round((t_resume - wall_migrate) * 1000)
            res["downtime_e2e_ms"] = round((t_resume - t_stop) * 1000)
            res["e2e_from_events"] = True
        res.update(trace.stop(t_migrate, rate_bps(rate),
                              f"{run_dir}/link-trace.tsv"))
        if d.get("status") != "completed":
            res["status"] = "destination " + d.get("status")
        try:
            dst.qmp.cmd("stop")
        except RuntimeError:
            pass
    trace.halt()  # (already, after a completed migration)
    cpu1 = (br.proc_cpu_s(src.pid), br.proc_cpu_s(dst.pid))
    res["qemu_cpu_s"] = round((cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1]), 2)
    mid_cpu = 0.0
    for m in mids:
        try:
            m.reap(60 if st == "completed" else 10)
        except RuntimeError:
            procs.stop_all()  # a stuck migproxy: counted as a failure
            res["status"] = f"{m.name} did not exit"
            return res
        mid_cpu += m.cpu_s()
        # where a middle's CPU goes: user or kernel, and how often it
        # slept (a wake-up per few segments is a cost of its own here)
        res.setdefault("middles", {})[m.name] = {
            "utime_s": round(m.rusage.ru_utime, 2),
            "stime_s": round(m.rusage.ru_stime, 2),
            "voluntary_switches": m.rusage.ru_nvcsw,
            "involuntary_switches": m.rusage.ru_nivcsw,
            "minor_faults": m.rusage.ru_minflt}
        if st == "completed" and m.status != 0:
            res["status"] = f"{m.name} exit status {m.status}"
    link1 = link_bytes()  # (the pair has exited: everything is counted)
    res["link_tx_bytes"] = link1[0] - link0[0]
    res["link_rx_bytes"] = link1[1] - link0[1]
    res["link_tx_packets"] = link1[2] - link0[2]
    res["link_rx_packets"] = link1[3] - link0[3]
    if mids:
        res["migproxy_cpu_s"] = round(mid_cpu, 2)
    if mode in PAIR_MODES:
        try:
            with open(f"{run_dir}/source.json") as f:
                rep = json.load(f)
            tun = rep.get("tunnel", {})
            res["tunnel_link_bytes_out"] = tun.get("link_bytes_out")
            res["tunnel_bytes_in"] = sum(
                c["to_dst"]["bytes_in"] for c in tun.get("channels", []))
            # the zstd of the stream that compressed most (the main one;
            # with QEMU's multifd, a channel): its level at the end and
            # each move (builds before the adaptive level have neither)
            zs = [c["to_dst"].get("pages", {}).get("zstd")
                  for c in tun.get("channels", [])]
            zs = [z for z in zs if z]
            if zs:
                z = max(zs, key=lambda z: z.get("bytes_in") or 0)
                res["zstd"] = {k: z.get(k) for k in (
                    "on", "bytes_in", "bytes_out", "cpu_s", "level",
                    "level_changes")}
        except (OSError, ValueError, KeyError) as e:
            res["report_error"] = str(e)
    res["cpu_s"] = round(res["qemu_cpu_s"] + mid_cpu, 2)
    if res["status"] == "completed" and bound is not None \
            and wl not in bound:
        bound[wl] = save_memory(args, dst, run_dir, wl)
    log(f"  {rate} {wl} {mode:12s} {res['status']}: total "
        f"{res['total_ms']} ms (end to end {res.get('end_to_end_ms')} ms), "
        f"downtime {res['downtime_ms']} ms, link "
        f"{res['link_tx_bytes'] / 1e6:.1f} MB (used {res.get('link_use')}, "
        f"idle {res.get('link_idle_s')} s), CPU {res['cpu_s']} s"
        + (f", zstd level {level_course(res)}" if "zstd" in res else ""))
    return res


def level_course(r):
    """The zstd level's course in a run: "3 -> 6 (2.1 s) -> 9 (5.3 s)",
    or the fixed level ("3"); "-" without a report."""
    z = r.get("zstd") or {}
    ch = z.get("level_changes")
    if not ch:
        if z.get("on") is None:
            return "-"
        # a build before the adaptive level has no `level`: 3 or --level
        return str(z["level"]) if z.get("level") is not None else "fixed"
    return " -> ".join([str(ch[0]["from"])] + [
        f"{c['to']} ({c['t_s']:.1f} s)" for c in ch])


def save_memory(args, dst, run_dir, wl):
    """The destination's whole RAM (the guest stopped), for the bound;
    compressed after the last run (compress_bounds), so that zstd does not
    take CPU from the migrations being timed."""
    ram_mib = args.linux_ram if wl in LINUX else args.guest_ram
    path = f"{run_dir}/dst-memory.bin"
    dst.qmp.cmd("pmemsave", val=0, size=ram_mib << 20, filename=path)
    return {"memory_bytes": ram_mib << 20, "image": path}


def compress_bounds(args, bound):
    """Each saved memory image compressed as well as zstd can."""
    for wl, b in bound.items():
        t = time.monotonic()
        out = subprocess.run(
            ["zstd", f"-{args.bound_level}", "--long=27", "-T0", "-q", "-c",
             b["image"]], check=True, stdout=subprocess.PIPE).stdout
        os.unlink(b.pop("image"))
        b["zstd_bytes"] = len(out)
        b["zstd_level"] = args.bound_level
        log(f"bound {wl}: {b['memory_bytes'] >> 20} MiB of memory -> "
            f"{len(out) / 1e6:.1f} MB (zstd -{args.bound_level} --long, "
            f"{time.monotonic() - t:.0f} s)")


def e2e_downtime(r):
    """The guest's pause from the source's stop (its total-time less its
    downtime after `migrate`) to the destination's completion, as far as
    polling the destination every 20 ms can tell."""
    if None in (r.get("end_to_end_ms"), r.get("total_ms"),
                r.get("downtime_ms")):
        return None
    return r["end_to_end_ms"] - r["total_ms"] + r["downtime_ms"]


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    n = len(xs)
    return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2


def fmt(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"


def report(results):
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, load average at "
          f"start {m['loadavg_start']}, at end {m.get('loadavg_end')}; "
          f"QEMU {results['qemu']}; commit {m['commit']}")
    runs = results["runs"]
    for rate in results["rates"]:
        for wl in results["workloads"]:
            rs = [r for r in runs if r["rate"] == rate
                  and r["workload"] == wl]
            if not rs:
                continue
            print(f"\n{rate}, workload {wl} ({results['setup'][wl]})\n")
            print("| mode | runs done/all | total s (QEMU) "
                  "| end to end s | downtime ms (QEMU) "
                  "| downtime ms to the destination "
                  "| link MB (src->dst) | link used, idle s "
                  "| CPU s (QEMU + migproxy) "
                  "| QEMU transferred MB | zstd ratio, level (each run) |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
            for mode in results["modes"]:
                mr = [r for r in rs if r["mode"] == mode]
                for r in mr:
                    r.setdefault("downtime_e2e_ms", e2e_downtime(r))
                ok = [r for r in mr if r.get("status") == "completed"]
                if not mr:
                    continue

                def med(k, scale=1.0):
                    v = median([r.get(k) for r in ok])
                    return None if v is None else v / scale
                cpu = med("cpu_s")
                mcpu = med("migproxy_cpu_s")
                print(f"| {mode} | {len(ok)}/{len(mr)} "
                      f"| {fmt(med('total_ms', 1000.0))} "
                      f"| {fmt(med('end_to_end_ms', 1000.0))} "
                      f"| {fmt(med('downtime_ms'), 0)} "
                      f"| {fmt(med('downtime_e2e_ms'), 0)} "
                      f"| {fmt(med('link_tx_bytes', 1e6))} "
                      f"| {fmt(med('link_use'), 3)}, "
                      f"{fmt(med('link_idle_s'))} "
                      f"| {fmt(cpu)}"
                      + (f" ({fmt(mcpu)} migproxy)" if mcpu is not None
                         else "")
                      + f" | {fmt(med('transferred', 1e6))} "
                      + f"| {zstd_cell(mr)} |")
            b = results["bound"].get(wl)
            if b and "zstd_bytes" in b:
                secs = b["zstd_bytes"] * 8 / rate_bps(rate)
                print(f"| bound: memory {b['memory_bytes'] >> 20} MiB, "
                      f"zstd -{b['zstd_level']} --long "
                      f"{b['zstd_bytes'] / 1e6:.1f} MB "
                      f"| | | {secs:.1f} | | | | | | | |")


def zstd_cell(runs):
    """Per run of a pair mode: zstd's ratio and the level's course."""
    cells = []
    for r in runs:
        z = r.get("zstd")
        if not z:
            continue
        ratio = (z["bytes_out"] / z["bytes_in"]) if z.get("bytes_in") else 0
        cells.append(f"{ratio:.3f}, {level_course(r)}")
    return "; ".join(cells)


def machine_info():
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f
                        if l.startswith("model name")), cpu)
    except OSError:
        pass
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short",
                             "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "commit": commit,
            "loadavg_start": " ".join(open("/proc/loadavg").read()
                                      .split()[:3])}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="100mbit,1gbit",
                    help="tc rates, comma-separated (default %(default)s)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument("--modes", default=",".join(DEFAULT_MODES),
                    help="comma-separated, of " + ", ".join(MODES)
                    + " (default %(default)s; see the header)")
    ap.add_argument("--runs", type=int, default=3,
                    help="rounds per rate and workload")
    ap.add_argument("--qemu", default="10.0", choices=sorted(QEMUS))
    ap.add_argument("--migproxy",
                    default=os.path.join(ROOT, "build", "src", "migproxy"))
    ap.add_argument("--workload", default=os.path.join(
        ROOT, "build", "samples", "workload", "workload.elf"))
    ap.add_argument("--guest-ram", type=int, default=512,
                    help="sample guest RAM, MiB")
    ap.add_argument("--guest-mem", type=int, default=448,
                    help="sample guest: MiB it fills and dirties")
    ap.add_argument("--dirty-rate", type=int, default=5000,
                    help="sample guest: pages dirtied per second")
    ap.add_argument("--linux-guest", default="",
                    help="samples/linux-guest/build.sh's folder")
    ap.add_argument("--linux-ram", type=int, default=512)
    ap.add_argument("--linux-fill", type=int, default=300)
    ap.add_argument("--multifd-channels", type=int, default=2)
    ap.add_argument("--pair-max-bandwidth", type=int, default=4 << 30,
                    help="max-bandwidth for mode pair, bytes/s")
    ap.add_argument("--before-migproxy", default="",
                    help="migproxy binary of mode pair-before")
    ap.add_argument("--source-arg", action="append", default=[],
                    help="one more `migproxy source` argument")
    ap.add_argument("--dest-arg", action="append", default=[],
                    help="one more `migproxy dest` argument")
    ap.add_argument("--settle", type=float, default=2.0,
                    help="seconds of dirtying before migrate")
    ap.add_argument("--boot-timeout", type=float, default=180)
    ap.add_argument("--migrate-timeout", type=float, default=300,
                    help="a migration still running then did not finish")
    ap.add_argument("--no-bound", action="store_true")
    ap.add_argument("--bound-level", type=int, default=19,
                    help="zstd level of the bound (default %(default)s; a "
                         "lower one only to check the script quickly)")
    ap.add_argument("--keep-net", action="store_true")
    ap.add_argument("--run-dir", default="")
    ap.add_argument("--json", default="")
    ap.add_argument("--from-json", default="",
                    help="print the tables of an earlier run's --json file "
                         "and exit")
    args = ap.parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            report(json.load(f))
        return

    rates = [r for r in args.rates.split(",") if r]
    workloads = [w for w in args.workloads.split(",") if w]
    modes = [m for m in args.modes.split(",") if m]
    for w in workloads:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}")
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m}")
    if "pair-before" in modes and not args.before_migproxy:
        ap.error("mode pair-before needs --before-migproxy")
    if set(LINUX) & set(workloads) and not args.linux_guest:
        ap.error("workloads linux and linux-text need --linux-guest")
    base = args.run_dir or tempfile.mkdtemp(prefix="bench-pair-")
    procs = br.Procs(os.environ.get("MP_BENCH_PIDFILE"))
    results = {"machine": machine_info(), "qemu": args.qemu, "rates": rates,
               "workloads": workloads, "modes": modes, "runs": [],
               "bound": {},
               "setup": {
                   "comp": f"{args.guest_ram} MiB, {args.guest_mem} MiB "
                           f"dirtied with compressible pages at "
                           f"{args.dirty_rate} pages/s",
                   "rand": f"{args.guest_ram} MiB, {args.guest_mem} MiB "
                           f"dirtied with random pages at "
                           f"{args.dirty_rate} pages/s",
                   "linux": f"Linux guest, {args.linux_ram} MiB, "
                            f"{args.linux_fill} MiB tmpfs of random data",
                   "linux-text": f"Linux guest, {args.linux_ram} MiB, "
                                 f"{args.linux_fill} MiB tmpfs of log-like "
                                 f"text"}}
    bound = None if args.no_bound else results["bound"]
    n = 0

    def on_signal(signum, frame):
        raise SystemExit(128 + signum)  # through the finally below
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        for rate in rates:
            link_up(rate)
            for wl in workloads:
                for rnd in range(args.runs):
                    k = rnd % len(modes)
                    for mode in modes[k:] + modes[:k]:
                        n += 1
                        run_dir = os.path.join(base, f"{n:03d}-{rate}-{wl}-"
                                               f"{mode}")
                        os.makedirs(run_dir)
                        log(f"run {n}: {rate} {wl} {mode} (round {rnd + 1})")
                        try:
                            r = one_run(args, rate, wl, mode, run_dir,
                                        procs, bound)
                        except (RuntimeError, OSError, ValueError) as e:
                            r = {"rate": rate, "workload": wl, "mode": mode,
                                 "status": f"error: {e}"}
                            log(f"  error: {e} (files in {run_dir})")
                        finally:
                            procs.stop_all()
                        r["round"] = rnd
                        results["runs"].append(r)
        if bound:
            compress_bounds(args, bound)
    finally:
        procs.stop_all()
        if not args.keep_net:
            link_down()
    results["machine"]["loadavg_end"] = " ".join(
        open("/proc/loadavg").read().split()[:3])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results)


if __name__ == "__main__":
    main()
