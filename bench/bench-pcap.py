#!/usr/bin/env python3
"""bench-pcap.py: `migproxy analyze` of packet captures against `cat` and
`tshark -r` on the same files (issue 11 item 1; docs/pcap.md, "Speed").

Needs root (a network namespace), tcpdump, tshark and ethtool.  The captures are
real: in a namespace of its own, the sample stream busy-10.0 (QEMU 10.0,
samples/streams) goes over CONNS loopback TCP connections, one after the
other, while tcpdump writes what the kernel sent; once with the loopback's
64 KiB segments and once with lo's MTU at 1500 (1448-byte segments, as on
an Ethernet).  Each tool reads each capture RUNS times (page cache warm);
the table gives the median CPU time (user + sys), GB/s of capture per
CPU second, and the peak RSS.

  bench/bench-pcap.py --migproxy build/src/migproxy [--conns 32]
                      [--runs 3] [--keep DIR]
"""
import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NS = "mpb-pcap"


def log(*a):
    print("bench-pcap:", *a, file=sys.stderr, flush=True)


def ns(*argv, **kw):
    return subprocess.run(["ip", "netns", "exec", NS] + list(argv), **kw)


def stream_bytes():
    path = os.path.join(ROOT, "samples", "streams", "busy-10.0.mig.zst")
    return subprocess.run(["zstd", "-dc", path], check=True,
                          capture_output=True).stdout


SENDER = r"""
import socket, sys, threading, time
data = open(sys.argv[1], "rb").read()
conns = int(sys.argv[2])
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(conns)
port = srv.getsockname()[1]
def sink():
    for _ in range(conns):
        c, _ = srv.accept()
        while c.recv(1 << 20):
            pass
        c.close()
t = threading.Thread(target=sink)
t.start()
for _ in range(conns):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()
    time.sleep(0.2)  # (tcpdump writes as it goes: no drops)
t.join()
"""


def make_capture(path, stream_file, conns, mtu):
    """`conns` connections carrying the stream, captured by tcpdump."""
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        ns("ip", "link", "set", "lo", "mtu", str(mtu), "up", check=True)
        if mtu < 65536:
            # (else the kernel hands tcpdump 64 KiB super-packets and cuts
            # them to the MTU only after it: segmentation offload)
            ns("ethtool", "-K", "lo", "tso", "off", "gso", "off", "gro",
               "off", check=True, capture_output=True)
        log_path = path + ".tcpdump.log"
        with open(log_path, "w") as lf:
            dump = subprocess.Popen(
                ["ip", "netns", "exec", NS, "tcpdump", "-i", "lo", "-B",
                 "262144", "-s", "0", "-w", path, "tcp"],
                stdout=lf, stderr=subprocess.STDOUT)
            time.sleep(1.0)
            ns(sys.executable, "-c", SENDER, stream_file, str(conns),
               check=True)
            time.sleep(2.0)  # (tcpdump writes what it still holds)
            dump.terminate()
            dump.wait(30)
        text = open(log_path).read()
        counts = dict((line.split(" ", 1)[1], int(line.split(" ", 1)[0]))
                      for line in text.splitlines()
                      if line[:1].isdigit() and " packets " in line)
        # (on lo the filter sees each packet twice, going and coming)
        if counts.get("packets dropped by kernel", -1) != 0:
            sys.exit(f"bench-pcap: the capture is not whole:\n{text}")
        return counts.get("packets captured", 0)
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


def measure(argv):
    """CPU seconds (user + sys), wall seconds, peak RSS (KiB) of argv."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench-pcap: {' '.join(argv)}: exit status {status}")
    return ru.ru_utime + ru.ru_stime, wall, ru.ru_maxrss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--migproxy", default=os.path.join(ROOT, "build", "src",
                                                        "migproxy"))
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--keep", help="write the captures here and keep them")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench-pcap: needs root (ip netns)")
    for tool in ("tcpdump", "tshark", "zstd", "ethtool"):
        if not shutil.which(tool):
            sys.exit(f"bench-pcap: {tool} is not installed")

    work = args.keep or tempfile.mkdtemp(prefix="bench-pcap.")
    os.makedirs(work, exist_ok=True)
    stream_file = os.path.join(work, "busy-10.0.mig")
    with open(stream_file, "wb") as f:
        f.write(stream_bytes())
    rows = []
    for label, mtu in (("loopback, 64 KiB segments", 65536),
                       ("MTU 1500, 1448-byte segments", 1500)):
        cap = os.path.join(work, f"mtu{mtu}.pcap")
        log(f"capturing {args.conns} connections at MTU {mtu}")
        packets = make_capture(cap, stream_file, args.conns, mtu)
        size = os.path.getsize(cap)
        label = f"{label} ({packets} packets)"
        tools = {
            "cat": ["cat", cap],
            "migproxy analyze": [args.migproxy, "analyze", "--json", "-q",
                                 cap],
            "tshark -r": ["tshark", "-n", "-r", cap, "-q"],
        }
        for name, argv in tools.items():
            measure(argv)  # (warms the page cache)
            got = [measure(argv) for _ in range(args.runs)]
            cpu = statistics.median(g[0] for g in got)
            wall = statistics.median(g[1] for g in got)
            rss = max(g[2] for g in got)
            rows.append((label, size, name, cpu, wall, rss))
            log(f"{label}: {name}: cpu {cpu:.2f} s, wall {wall:.2f} s")

    print(f"load average at the end: {os.getloadavg()[0]:.1f}; "
          f"{args.conns} connections of busy-10.0 per capture, median of "
          f"{args.runs}\n")
    print("(max RSS: of the child, which starts as a fork of this Python: "
          "cat's is that floor)\n")
    print("| capture | size | tool | CPU s (user+sys) | GB/s per CPU s | "
          "wall s | max RSS |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for label, size, name, cpu, wall, rss in rows:
        rate = f"{size / cpu / 1e9:.2f}" if cpu > 0 else "-"
        print(f"| {label} | {size / 1e6:.0f} MB | {name} | {cpu:.2f} | "
              f"{rate} | {wall:.2f} | {rss / 1024:.0f} MiB |")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
