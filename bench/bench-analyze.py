#!/usr/bin/env python3
"""bench-analyze.py: throughput and peak memory of `migproxy analyze`.

Called by bench/bench-analyze.sh, which builds build-bench/ (release) first.

1. Captures two RAM-dominated streams from real QEMU 7.2 (once; they are
   cached in bench/.cache/ and reused): the workload guest in a 2400 MiB
   VM filling 2200 MiB (long) or 1100 MiB (half) of random and
   compressible pages, migrated with `migrate "exec:cat > FILE"`.
2. On each stream, from the page cache, alternating, N runs each:
     cat FILE > /dev/null                      (the ceiling)
     migproxy analyze -q --json FILE > /dev/null
     cat FILE > DIR/copy.mig                   (the ceiling of writing)
     migproxy analyze -q --dump-ram DIR FILE   (DIR next to FILE)
   and reports the median GB/s (decimal), the ratio to cat and the peak
   RSS of each (wait4's ru_maxrss).
3. Runs QEMU's scripts/analyze-migration.py once on the long stream, if
   the 7.2 source tree is at hand, with a time limit.

Python standard library only.
"""
import argparse
import ctypes
import json
import os
import shutil
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qmp import Qmp  # noqa: E402  (bench/qmp.py)
GUEST_MIX = "rand=70 comp=30 zero=0 dup=0"
STREAMS = [
    # name, working set (the guest RAM stays the same: only the stream's
    # length changes between the two)
    ("long", "2200M"),
    ("half", "1100M"),
]
GUEST_RAM = "2400M"
MACHINE = "pc-q35-7.2"
ANALYZE_PY = "/tmp/qsrc/qemu-7.2+dfsg/scripts/analyze-migration.py"
# issue 2's targets, and the cat speed they were set against
TARGETS = {"summary": 5.0, "dump-ram": 1.5}
CAT_REF = 10.0


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def capture(path, workload, mem, qemu):
    """Migrates the workload guest into `path` (written under a temporary
    name and renamed when complete, so a broken capture is never reused)."""
    tmp = path + ".part"
    work = tempfile.mkdtemp(prefix="bench-qemu-")
    con = os.path.join(work, "con")
    sock = os.path.join(work, "qmp.sock")
    argv = [qemu, "-accel", "tcg", "-M", MACHINE, "-m", GUEST_RAM,
            "-display", "none", "-nodefaults", "-kernel", workload,
            "-append", f"mem={mem} {GUEST_MIX}",
            "-debugcon", f"file:{con}",
            "-qmp", f"unix:{sock},server=on,wait=off"]
    log(f"capture: {' '.join(argv)}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 900
        ready = ""
        while not ready:
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the guest did not say READY in 900 s")
            time.sleep(0.5)
            try:
                with open(con, errors="replace") as f:
                    ready = next((l for l in f if "workload: READY" in l), "")
            except FileNotFoundError:
                pass
        log(f"capture: {ready.strip()}")
        qmp = Qmp(sock)
        qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40,
                                            "downtime-limit": 300})
        t0 = time.monotonic()
        q, qtmp = shlex.quote(path), shlex.quote(tmp)
        qmp.cmd("migrate", uri=f"exec:cat > {qtmp} && mv {qtmp} {q}")
        while True:
            time.sleep(0.5)
            st = qmp.cmd("query-migrate")
            if st.get("status") == "completed":
                break
            if st.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"migration {st.get('status')}: {st}")
        log(f"capture: migrated in {time.monotonic() - t0:.1f} s")
        qmp.close()
        with open(path + ".query-migrate.json", "w") as f:
            json.dump(st, f, indent=1)
    finally:
        proc.kill()  # by pid: only the QEMU started here
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)
    # `cat` may still be writing when QEMU reports completion: the shell
    # renames the file once it is done
    for _ in range(600):
        if os.path.exists(path):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{tmp}: cat did not finish")


# Peak RSS: wait4() gives the child's ru_maxrss, but Linux carries the
# high-water mark of the pre-exec image across exec, and a child forked
# from this Python starts with Python's RSS (30 MiB here).  So the command
# is started by a small sh that exits at once, leaving it to us as the
# child subreaper (prctl PR_SET_CHILD_SUBREAPER): its mark starts from
# sh's few hundred KiB.
PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


def _become_subreaper():
    global _subreaper
    if not _subreaper:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
        _subreaper = True


def run(argv, timeout=None, cwd=None, out="/dev/null"):
    """Runs argv, stdin on /dev/null, stdout to `out`.
    @return (seconds, peak RSS in KiB, exit status or None on timeout)."""
    _become_subreaper()
    t0 = time.monotonic()
    sh = subprocess.Popen(
        ["/bin/sh", "-c", 'o=$1; shift; "$@" </dev/null >"$o" & echo $!',
         "sh", out] + argv, stdout=subprocess.PIPE, cwd=cwd)
    pid = int(sh.stdout.read())
    sh.stdout.close()
    sh.wait()
    timed_out = False
    if timeout:
        deadline = t0 + timeout
        while True:
            got, status, ru = os.wait4(pid, os.WNOHANG)
            if got:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                timed_out = True
                got, status, ru = os.wait4(pid, 0)
                break
            time.sleep(0.02)
    else:
        got, status, ru = os.wait4(pid, 0)
    secs = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    return secs, ru.ru_maxrss, (None if timed_out else code)


def warm(path):
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


def bench_stream(path, migproxy, runs):
    size = os.path.getsize(path)
    dump_dir = os.path.join(os.path.dirname(path), "dump")
    copy = os.path.join(os.path.dirname(path), "copy.mig")
    shutil.rmtree(dump_dir, ignore_errors=True)
    # name: (argv, stdout, output to delete after each run)
    cmds = {
        "cat": (["cat", path], "/dev/null", None),
        "summary": ([migproxy, "analyze", "-q", "--json", path],
                    "/dev/null", None),
        # the ceiling of anything that writes the stream's size to files
        "cat > file": (["cat", path], copy, copy),
        "dump-ram": ([migproxy, "analyze", "-q", "--dump-ram", dump_dir,
                      path], "/dev/null", dump_dir),
    }
    os.sync()
    warm(path)
    times = {k: [] for k in cmds}
    rss = {k: 0 for k in cmds}
    for i in range(runs):
        for name, (argv, out, made) in cmds.items():
            secs, kib, rc = run(argv, out=out)
            if rc != 0:
                raise RuntimeError(f"{' '.join(argv)}: exit status {rc}")
            times[name].append(secs)
            rss[name] = max(rss[name], kib)
            if made:
                # dropped before writeback, so no run pays for another's
                if os.path.isdir(made):
                    shutil.rmtree(made)
                else:
                    os.unlink(made)
                os.sync()
            log(f"  run {i + 1} {name:10s} {secs:7.3f} s "
                f"{size / 1e9 / secs:6.2f} GB/s  {kib / 1024:7.1f} MiB")
    res = {"bytes": size, "runs": runs, "cmds": {}}
    cat_med = statistics.median(times["cat"])
    copy_med = statistics.median(times["cat > file"])
    for name in cmds:
        med = statistics.median(times[name])
        res["cmds"][name] = {
            "median_s": med,
            "times_s": times[name],
            "gb_s": size / 1e9 / med,
            "ratio_to_cat": cat_med / med,
            "ratio_to_copy": copy_med / med,
            "peak_rss_kib": rss[name],
        }
    return res


def page_mix(path, migproxy):
    out = subprocess.run([migproxy, "analyze", "-q", "--json", path],
                         check=True, capture_output=True).stdout
    doc = json.loads(out)
    return {
        "machine": doc["stream"]["machine"],
        "ram_total": doc["ram"]["total"],
        "pages": doc["ram"]["pages"],
        "ram_bytes": doc["ram"]["bytes"],
        "rounds": [{k: r[k] for k in ("index", "phase", "pages", "bytes")}
                   for r in doc["rounds"]],
    }


def bench_analyze_py(script, path, limit):
    """QEMU's own analyzer: summary (-d state) and RAM extraction (-x)."""
    size = os.path.getsize(path)
    res = {}
    work = tempfile.mkdtemp(prefix="amig-", dir=os.path.dirname(path))
    try:
        for name, argv in (
                ("summary", [sys.executable, script, "-f", path]),
                ("extract", [sys.executable, script, "-x", "-f", path])):
            log(f"  {' '.join(argv)}")
            secs, kib, rc = run(argv, timeout=limit, cwd=work)
            res[name] = {"seconds": secs, "peak_rss_kib": kib,
                         "exit": rc, "timed_out": rc is None,
                         "gb_s": size / 1e9 / secs}
            log(f"  analyze-migration.py {name}: {secs:.1f} s, "
                f"{size / 1e9 / secs:.3f} GB/s, {kib / 1024:.1f} MiB, "
                + ("timed out" if rc is None else f"exit {rc}"))
            for f in os.listdir(work):
                p = os.path.join(work, f)
                shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return res


def machine_info(build):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    opts = json.loads(subprocess.run(
        ["meson", "introspect", build, "--buildoptions"],
        check=True, capture_output=True).stdout)
    want = ("buildtype", "b_ndebug", "optimization", "debug")
    return {"cpu": cpu, "cores": os.cpu_count(),
            "build": {o["name"]: o["value"] for o in opts
                      if o["name"] in want}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "bench", ".cache"))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--py-limit", type=int, default=900,
                    help="time limit of each analyze-migration.py run (s)")
    ap.add_argument("--analyze-py", default=ANALYZE_PY,
                    help="QEMU's scripts/analyze-migration.py")
    ap.add_argument("--no-analyze-py", action="store_true")
    ap.add_argument("--only", choices=[s[0] for s in STREAMS],
                    help="bench one stream")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    migproxy = os.path.join(args.build, "src", "migproxy")
    workload = os.path.join(args.build, "samples", "workload", "workload.elf")
    os.makedirs(args.cache, exist_ok=True)
    results = {"machine": machine_info(args.build), "streams": {}}
    info = results["machine"]
    log(f"machine: {info['cpu']}, {info['cores']} cores; "
        f"build {args.build}: {info['build']}")

    for name, mem in STREAMS:
        path = os.path.join(args.cache, f"{name}-7.2.mig")
        if not os.path.exists(path):
            capture(path, workload, mem, args.qemu)
        else:
            log(f"capture: reusing {path}")
    for name, mem in STREAMS:
        if args.only and name != args.only:
            continue
        path = os.path.join(args.cache, f"{name}-7.2.mig")
        log(f"{name}: {path}, {os.path.getsize(path) / 1e9:.3f} GB")
        res = bench_stream(path, migproxy, args.runs)
        res["guest"] = f"-m {GUEST_RAM} -append 'mem={mem} {GUEST_MIX}'"
        res["mix"] = page_mix(path, migproxy)
        results["streams"][name] = res
    if not args.no_analyze_py and os.path.exists(args.analyze_py) \
            and not (args.only and args.only != "long"):
        path = os.path.join(args.cache, "long-7.2.mig")
        log("analyze-migration.py (QEMU 7.2) on the long stream")
        results["analyze_py"] = bench_analyze_py(args.analyze_py, path,
                                                 args.py_limit)

    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results)


def report(results):
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; build: "
          + ", ".join(f"{k}={v}" for k, v in m["build"].items()))
    print()
    print("| stream | command | GB/s | ratio to cat | ratio to cat > file "
          "| peak RSS |")
    print("|---|---|---:|---:|---:|---:|")
    for sname, s in results["streams"].items():
        for cname, c in s["cmds"].items():
            print(f"| {sname} ({s['bytes'] / 1e9:.2f} GB) | `{cname}` "
                  f"| {c['gb_s']:.2f} | {c['ratio_to_cat']:.2f} "
                  f"| {c['ratio_to_copy']:.2f} "
                  f"| {c['peak_rss_kib'] / 1024:.1f} MiB |")
    for name, r in results.get("analyze_py", {}).items():
        s = results["streams"].get("long")
        state = ("timed out" if r["timed_out"]
                 else "ok" if r["exit"] == 0 else f"exit {r['exit']}")
        cat = s["cmds"]["cat"]["median_s"] / r["seconds"] if s else 0
        copy = (s["cmds"]["cat > file"]["median_s"] / r["seconds"]
                if s else 0)
        print(f"| long | analyze-migration.py {name} ({state}) "
              f"| {r['gb_s']:.3f} | {cat:.3f} | {copy:.3f} "
              f"| {r['peak_rss_kib'] / 1024:.1f} MiB |")
    print()
    for sname, s in results["streams"].items():
        for cname, goal in TARGETS.items():
            c = s["cmds"][cname]
            print(f"{sname} {cname}: {c['gb_s']:.2f} GB/s (target {goal}), "
                  f"{c['ratio_to_cat']:.2f} x cat (target {goal / CAT_REF:.2f}"
                  f" x a {CAT_REF:.0f} GB/s cat)")
    for sname, s in results["streams"].items():
        mix = s["mix"]
        print(f"\n{sname}: {s['bytes']} bytes, guest {s['guest']}, "
              f"machine {mix['machine']}, RAM {mix['ram_total']} bytes, "
              f"pages {mix['pages']}, rounds "
              + ", ".join(f"{r['index']} {r['phase']} {r['pages']} pages"
                          for r in mix["rounds"]))
        for cname, c in s["cmds"].items():
            print(f"  {cname}: " + " ".join(f"{t:.3f}" for t in c["times_s"])
                  + " s")


if __name__ == "__main__":
    main()
