#!/usr/bin/env python3
"""bench-statefiles.py: `migproxy analyze` on the state files users hold.

Called by bench/bench-statefiles.sh, which builds build-bench/ (release).

1. Makes two files of one 2 GB guest, once (cached in bench/.cache/):
   the workload guest in a 2400 MiB QEMU 10.0 VM filling 2200 MiB with
   the page mix of bench-analyze.py, stopped (as `virsh save` stops it),
   then migrated twice:
     libvirt-10.0.save   a libvirt save image: the LibvirtQemudSave
                         header (version 2, raw) and a domain XML written
                         here, then QEMU's stream appended by
                         `migrate "exec:cat >> FILE"`; libvirt itself
                         is not run (see docs/benchmarks.md: why)
     mapped-ram-10.0.mig `migrate file:FILE` with the mapped-ram
                         capability (no multifd)
2. On each file, from the page cache, alternating, N runs each:
     cat FILE > /dev/null                  (the ceiling of reading)
     migproxy analyze FILE > /dev/null     (the summary)
     cat FILE > DIR/copy                   (the ceiling of writing)
     migproxy analyze -q --dump-ram DIR FILE
   and reports the median GB/s (decimal, of the file's size), the ratio to
   cat and to cat > file, the median CPU time (user + system, of the
   command and what it waits for: a loaded machine's disk makes the wall
   time of writers vary several-fold, their CPU time much less) and the
   peak RSS of each (wait4's ru_maxrss).
   The load average is printed before and after: the machine is shared,
   so only ratios within one run compare.

Python standard library only; QMP, run() and warm() are bench-analyze.py's.
"""
import argparse
import importlib.util
import json
import os
import resource
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_bench_analyze():
    spec = importlib.util.spec_from_file_location(
        "bench_analyze", os.path.join(ROOT, "bench", "bench-analyze.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ba = _load_bench_analyze()
log = ba.log

GUEST_RAM_MIB = 2400
GUEST_MEM = "2200M"
MACHINE = "pc-q35-10.0"
DOMAIN = "mp-bench"
FILES = [("libvirt image", "libvirt-10.0.save"),
         ("mapped-ram", "mapped-ram-10.0.mig")]

# libvirt's save image header (src/io/libvirt-image.h): magic, then
# version, data_len, was_running, compressed, cookieOffset, unused[14],
# 32-bit words in the writer's (here: little-endian) byte order.
LIBVIRT_MAGIC = b"LibvirtQemudSave"
LIBVIRT_VERSION = 2
LIBVIRT_RAW = 0


def libvirt_header(xml, was_running=1):
    data = xml.encode() + b"\0"
    return (LIBVIRT_MAGIC
            + struct.pack("<5I", LIBVIRT_VERSION, len(data), was_running,
                          LIBVIRT_RAW, 0)
            + bytes(14 * 4) + data)


def domain_xml(qemu, workload):
    return (f"<domain type='qemu'>\n  <name>{DOMAIN}</name>\n"
            f"  <memory unit='MiB'>{GUEST_RAM_MIB}</memory>\n"
            f"  <vcpu>1</vcpu>\n"
            f"  <os><type arch='x86_64' machine='{MACHINE}'>hvm</type>\n"
            f"    <kernel>{workload}</kernel>"
            f"<cmdline>mem={GUEST_MEM} {ba.GUEST_MIX}</cmdline></os>\n"
            f"  <devices><emulator>{qemu}</emulator>\n"
            f"    <memballoon model='none'/></devices>\n</domain>\n")


def qemu10(prefix):
    """The binary, its extra arguments and environment (as
    src/qemu/qemu-process.c runs QEMU 10.0 from .qemu/10.0)."""
    binary = os.path.join(prefix, "usr", "bin", "qemu-system-x86_64")
    args = ["-L", os.path.join(prefix, "usr", "share", "qemu"),
            "-L", os.path.join(prefix, "usr", "share", "seabios")]
    env = dict(os.environ)
    lib = os.path.join(prefix, "usr", "lib")
    for name in sorted(os.listdir(lib)):
        if os.path.isdir(os.path.join(lib, name, "qemu")):
            env["QEMU_MODULE_DIR"] = os.path.join(lib, name, "qemu")
            break
    return binary, args, env


def wait_migration(qmp, what):
    t0 = time.monotonic()
    while True:
        time.sleep(0.5)
        st = qmp.cmd("query-migrate")
        if st.get("status") == "completed":
            log(f"capture: {what} in {time.monotonic() - t0:.1f} s")
            return st
        if st.get("status") in ("failed", "cancelled"):
            raise RuntimeError(f"{what}: migration {st.get('status')}: {st}")
        if time.monotonic() - t0 > 1800:
            raise RuntimeError(f"{what}: not completed in 1800 s")


def wait_file(path, tmp):
    # the shell renames the file once cat is done, which may be after
    # QEMU reports completion
    for _ in range(600):
        if os.path.exists(path):
            return
        time.sleep(0.1)
    raise RuntimeError(f"{tmp}: cat did not finish")


def capture(cache, workload, prefix):
    """Boots the workload guest once, stops it and writes both files, each
    under a temporary name renamed when complete (a broken capture is
    never reused)."""
    image = os.path.join(cache, FILES[0][1])
    mapped = os.path.join(cache, FILES[1][1])
    binary, extra, env = qemu10(prefix)
    work = tempfile.mkdtemp(prefix="bench-qemu-")
    con = os.path.join(work, "con")
    sock = os.path.join(work, "qmp.sock")
    argv = [binary] + extra + [
        "-accel", "tcg", "-M", MACHINE, "-m", f"{GUEST_RAM_MIB}M",
        "-display", "none", "-nodefaults", "-no-user-config",
        "-kernel", workload, "-append", f"mem={GUEST_MEM} {ba.GUEST_MIX}",
        "-chardev", f"file,id=con,path={con}",
        "-device", "isa-debugcon,iobase=0xe9,chardev=con",
        "-qmp", f"unix:{sock},server=on,wait=off"]
    log(f"capture: {' '.join(argv)}")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 1200
        ready = ""
        while not ready:
            if proc.poll() is not None:
                raise RuntimeError(f"QEMU exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError("the guest did not say READY in 1200 s")
            time.sleep(0.5)
            try:
                with open(con, errors="replace") as f:
                    ready = next((l for l in f if "workload: READY" in l), "")
            except FileNotFoundError:
                pass
        log(f"capture: {ready.strip()}")
        qmp = ba.Qmp(sock)
        qmp.cmd("stop")
        qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 40})

        if not os.path.exists(image):
            tmp = image + ".part"
            with open(tmp, "wb") as f:
                f.write(libvirt_header(domain_xml(binary, workload)))
            q, qtmp = shlex.quote(image), shlex.quote(tmp)
            qmp.cmd("migrate", uri=f"exec:cat >> {qtmp} && mv {qtmp} {q}")
            st = wait_migration(qmp, "libvirt image")
            with open(image + ".query-migrate.json", "w") as f:
                json.dump(st, f, indent=1)
            wait_file(image, tmp)

        if not os.path.exists(mapped):
            tmp = mapped + ".part"
            if os.path.exists(tmp):
                os.unlink(tmp)
            # QEMU refuses to migrate a guest paused by a completed
            # migration: resumed for a moment and stopped again (the
            # workload is idle after its fill)
            if qmp.cmd("query-status")["status"] == "postmigrate":
                qmp.cmd("cont")
                qmp.cmd("stop")
            qmp.cmd("migrate-set-capabilities", capabilities=[
                {"capability": "mapped-ram", "state": True}])
            qmp.cmd("migrate", uri=f"file:{tmp}")
            st = wait_migration(qmp, "mapped-ram file")
            with open(mapped + ".query-migrate.json", "w") as f:
                json.dump(st, f, indent=1)
            os.rename(tmp, mapped)
        qmp.close()
    finally:
        proc.kill()  # by pid: only the QEMU started here
        proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cpu_children():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench_file(path, migproxy, runs):
    size = os.path.getsize(path)
    dump_dir = path + ".dump"
    copy = path + ".copy"
    shutil.rmtree(dump_dir, ignore_errors=True)
    # name: (argv, stdout, output to delete after each run)
    cmds = {
        "cat": (["cat", path], "/dev/null", None),
        "summary": ([migproxy, "analyze", path], "/dev/null", None),
        "cat > file": (["cat", path], copy, copy),
        "dump-ram": ([migproxy, "analyze", "-q", "--dump-ram", dump_dir,
                      path], "/dev/null", dump_dir),
    }
    os.sync()
    ba.warm(path)
    times = {k: [] for k in cmds}
    cpu = {k: [] for k in cmds}
    rss = {k: 0 for k in cmds}
    for i in range(runs):
        for name, (argv, out, made) in cmds.items():
            # the command is reaped by ba.run (this process is its
            # subreaper), so it shows in RUSAGE_CHILDREN, with ba.run's sh
            before = cpu_children()
            secs, kib, rc = ba.run(argv, out=out)
            if rc != 0:
                raise RuntimeError(f"{' '.join(argv)}: exit status {rc}")
            times[name].append(secs)
            cpu[name].append(cpu_children() - before)
            rss[name] = max(rss[name], kib)
            if made:
                # dropped before writeback, so no run pays for another's;
                # and the disk holds one output at a time
                if os.path.isdir(made):
                    shutil.rmtree(made)
                else:
                    os.unlink(made)
                os.sync()
            log(f"  run {i + 1} {name:10s} {secs:7.3f} s "
                f"{size / 1e9 / secs:6.2f} GB/s  {kib / 1024:7.1f} MiB  "
                f"CPU {cpu[name][-1]:.3f} s")
    res = {"bytes": size, "allocated": os.stat(path).st_blocks * 512,
           "runs": runs, "cmds": {}}
    cat_med = statistics.median(times["cat"])
    copy_med = statistics.median(times["cat > file"])
    for name in cmds:
        med = statistics.median(times[name])
        res["cmds"][name] = {
            "median_s": med, "times_s": times[name],
            "cpu_s": statistics.median(cpu[name]), "cpus_s": cpu[name],
            "gb_s": size / 1e9 / med,
            "ratio_to_cat": cat_med / med,
            "ratio_to_copy": copy_med / med,
            "peak_rss_kib": rss[name],
        }
    return res


def describe(path, migproxy):
    doc = json.loads(subprocess.run(
        [migproxy, "analyze", "-q", "--json", path],
        check=True, capture_output=True).stdout)
    return {"format": doc.get("format"),
            "machine": doc["stream"]["machine"],
            "ram_total": doc["ram"]["total"], "pages": doc["ram"]["pages"],
            "errors": len(doc.get("errors", []))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--build", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "bench", ".cache"))
    ap.add_argument("--qemu10", default=os.path.join(ROOT, ".qemu", "10.0"),
                    help="QEMU 10.0 install prefix (scripts/fetch-qemu10.sh)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    migproxy = os.path.join(args.build, "src", "migproxy")
    workload = os.path.join(args.build, "samples", "workload", "workload.elf")
    os.makedirs(args.cache, exist_ok=True)
    paths = [os.path.join(args.cache, f) for _, f in FILES]
    if not all(os.path.exists(p) for p in paths):
        capture(args.cache, workload, args.qemu10)
    results = {"machine": ba.machine_info(args.build),
               "guest": f"QEMU 10.0 -M {MACHINE} -m {GUEST_RAM_MIB}M, "
                        f"workload mem={GUEST_MEM} {ba.GUEST_MIX}, stopped",
               "load_start": loadavg(), "files": {}}
    log(f"load average at start: {results['load_start']}")
    for (name, _), path in zip(FILES, paths):
        log(f"{name}: {path}, {os.path.getsize(path) / 1e9:.3f} GB")
        res = bench_file(path, migproxy, args.runs)
        res["info"] = describe(path, migproxy)
        results["files"][name] = res
    results["load_end"] = loadavg()
    log(f"load average at end: {results['load_end']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    report(results)


def report(results):
    m = results["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores; build: "
          + ", ".join(f"{k}={v}" for k, v in m["build"].items()))
    print(f"guest: {results['guest']}")
    print(f"load average (1, 5, 15 min): {results['load_start']} at start, "
          f"{results['load_end']} at end")
    print()
    print("| file | command | GB/s | ratio to cat | ratio to cat > file "
          "| CPU s | peak RSS |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for fname, s in results["files"].items():
        for cname, c in s["cmds"].items():
            print(f"| {fname} ({s['bytes'] / 1e9:.2f} GB) | `{cname}` "
                  f"| {c['gb_s']:.2f} | {c['ratio_to_cat']:.2f} "
                  f"| {c['ratio_to_copy']:.2f} | {c['cpu_s']:.2f} "
                  f"| {c['peak_rss_kib'] / 1024:.1f} MiB |")
    for fname, s in results["files"].items():
        i = s["info"]
        print(f"\n{fname}: {s['bytes']} bytes ({s['allocated']} allocated), "
              f"format {i['format']}, machine {i['machine']}, "
              f"RAM {i['ram_total']} bytes, pages {i['pages']}, "
              f"{i['errors']} errors")
        for cname, c in s["cmds"].items():
            print(f"  {cname}: " + " ".join(f"{t:.3f}" for t in c["times_s"])
                  + " s; CPU " + " ".join(f"{t:.3f}" for t in c["cpus_s"])
                  + " s")


if __name__ == "__main__":
    main()
