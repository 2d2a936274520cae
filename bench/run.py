#!/usr/bin/env python3
"""Side-by-side load benchmark: direct upstream, nginx, haproxy, our server, an embedded proxy.

Run through bench/run.sh, which installs the tools and builds the binaries. Each proxy
runs alone on one pinned core (taskset); the load generator and the upstream share the
other. Targets are interleaved round by round so that machine noise hits all alike, and
every figure is also reported as a ratio to nginx measured in the same run.

Figures:
  req/s at saturation (wrk / h2load, closed loop);
  CPU per request: the proxy's utime+stime from /proc over the requests served;
  p50/p99/p99.9 at a fixed rate of 50 % of nginx's small-GET maximum (h2load --rps, open loop);
  RSS idle and per extra idle keep-alive client connection (measured after IDLE_SETTLE s idle);
  upstream TCP connections opened per 1,000 requests (connection reuse);
  instructions per request under callgrind (noise-free), by differencing two request counts;
  heap allocations per request under valgrind's dhat, the same way (our server from a build
  with the system allocator, `axum-reverse-proxy-sysalloc`: dhat does not see mimalloc's).
"""

import argparse
import atexit
import datetime
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RELEASE = os.path.join(ROOT, "target", "release")
PROXY_CORE = "0"
OTHER_CORE = "1"
# Seconds idle connections sit before their memory is measured.
IDLE_SETTLE = 3
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listening on {port}")


def process_tree(pid):
    """pid and all its descendants."""
    pids = [pid]
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    except OSError:
        out = ""
    for child in out.split():
        pids.extend(process_tree(int(child)))
    return pids


def cpu_seconds(pid):
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def rss_kib(pid):
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def http_get(port, path):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")


def upstream_connections(ports):
    total = 0
    for port in ports:
        m = re.search(r"connections (\d+)", http_get(port, "/_stats"))
        total += int(m.group(1)) if m else 0
    return total


# ===== targets =====


class Target:
    def __init__(self, name, argv, port, h2_port=None, env=None, core=PROXY_CORE, config=None):
        self.name, self.argv, self.port = name, argv, port
        self.h2_port = h2_port or port
        self.env, self.core, self.config = env, core, config
        self.proc = None

    def start(self, wrapper=()):
        env = dict(os.environ, **(self.env or {}))
        argv = ["taskset", "-c", self.core, *wrapper, *self.argv]
        self.proc = subprocess.Popen(
            argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        wait_port(self.port, timeout=60 if wrapper else 10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid


# What every nginx location proxies with: HTTP/1.1 upstream, no buffering, no body limit,
# and what our server adds to every request by default (asked of haproxy too, so that all
# do the same work): X-Forwarded-For/-Host/-Proto upstream, and a random request id
# upstream and back to the client.
NGINX_LOCATION = """
            proxy_http_version 1.1;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host $http_host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Request-Id $request_id;
            add_header X-Request-Id $request_id always;
            proxy_buffering off;
            client_max_body_size 0;"""


def nginx_target(tmp, up_ports):
    port, h2 = free_port(), free_port()
    conf = os.path.join(tmp, "nginx.conf")
    balanced = " ".join(f"server 127.0.0.1:{p};" for p in up_ports)
    with open(conf, "w") as f:
        f.write(f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/nginx-error.log error;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    keepalive_requests 1000000;
    # Bodies up to 64 KiB stay in memory: the worker (www-data) need not write temp files.
    client_body_buffer_size 64k;
    # Idle upstream connections kept: at least the most requests in flight (64 HTTP/2
    # connections x 10 streams), or nginx opens and closes connections under load.
    upstream up {{ server 127.0.0.1:{up_ports[0]}; keepalive 1024; }}
    upstream up4 {{ {balanced} keepalive 1024; }}
    server {{
        listen 127.0.0.1:{port} reuseport;
        listen 127.0.0.1:{h2} http2;
        location / {{
            proxy_pass http://up;
            proxy_set_header Connection "";{NGINX_LOCATION}
        }}
        location /b/ {{
            proxy_pass http://up4;
            proxy_set_header Connection "";{NGINX_LOCATION}
        }}
        location = /ws {{
            proxy_pass http://up;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 1h;{NGINX_LOCATION}
        }}
    }}
}}
""")
    return Target("nginx", ["nginx", "-c", conf, "-p", tmp], port, h2)


def haproxy_target(tmp, up_ports):
    port, h2 = free_port(), free_port()
    conf = os.path.join(tmp, "haproxy.cfg")
    balanced = "\n".join(f"    server up{i} 127.0.0.1:{p}" for i, p in enumerate(up_ports))
    with open(conf, "w") as f:
        f.write(f"""
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    bind 127.0.0.1:{h2} proto h2
    option forwardfor
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Forwarded-Proto http
    unique-id-format %[uuid()]
    unique-id-header X-Request-Id
    http-after-response set-header X-Request-Id %[unique-id]
    use_backend be4 if {{ path_beg /b/ }}
    default_backend be
backend be
    server up 127.0.0.1:{up_ports[0]}
backend be4
    balance roundrobin
{balanced}
""")
    return Target("haproxy", ["haproxy", "-f", conf, "-db"], port, h2)


def ours_target(tmp, up_ports):
    """Our server from a config file: one worker, no access log (nginx's is off too), its
    default forwarding headers and request ids; `/b/` goes to a round-robin pool over all
    the upstreams, the rest to the first."""
    port = free_port()
    conf = os.path.join(tmp, "ours.toml")
    balanced = ", ".join(f'"http://127.0.0.1:{p}"' for p in up_ports)
    with open(conf, "w") as f:
        f.write(f"""
[server]
workers = 1
[access_log]
output = "off"
[listeners.main]
address = "127.0.0.1:{port}"
h2c = true
[pools.up]
targets = ["http://127.0.0.1:{up_ports[0]}"]
[pools.up4]
targets = [{balanced}]
[[routes]]
name = "all"
prefix = "/"
pool = "up"
[[routes]]
name = "balanced"
prefix = "/b"
pool = "up4"
""")
    return Target(
        "ours",
        [os.path.join(RELEASE, "axum-reverse-proxy"), "--config", conf],
        port,
        env={"RUST_LOG": "error"},
    )


def embedded_target(up_ports):
    port = free_port()
    upstreams = [f"http://127.0.0.1:{p}" for p in up_ports]
    return Target(
        "embedded",
        [os.path.join(RELEASE, "bench-embedded"), f"127.0.0.1:{port}", *upstreams[:1], *upstreams],
        port,
        env={"TOKIO_WORKER_THREADS": "1"},
    )


# ===== load generators =====


def wrk(port, path, seconds, conns, extra=()):
    out = subprocess.run(
        ["taskset", "-c", OTHER_CORE, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", *extra,
         f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True,
    ).stdout
    reqs = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "requests": int(reqs.group(1)) if reqs else 0,
        "errors": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def h2load(port, path, seconds, conns, streams=10, h1=False, rps=None, log=None):
    argv = ["taskset", "-c", OTHER_CORE, "h2load", f"-c{conns}", f"-m{1 if h1 else streams}",
            f"-D{seconds}", "-t1"]
    if h1:
        argv.append("--h1")
    if rps:
        argv.append(f"--rps={rps}")
    if log:
        argv.append(f"--log-file={log}")
    argv.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(argv, capture_output=True, text=True).stdout
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed", out)
    return {"requests": int(m.group(4)) if m else 0, "errors": int(m.group(5)) if m else 0}


def ws_echo(port, seconds, conns):
    """WebSocket echo load (`bench-ws`): `conns` connections, each a 32-byte message and its
    echo at a time; a message echoed counts as a request."""
    out = subprocess.run(
        ["taskset", "-c", OTHER_CORE, os.path.join(RELEASE, "bench-ws"),
         f"ws://127.0.0.1:{port}/ws", str(conns), str(seconds)],
        capture_output=True, text=True,
    ).stdout
    m = re.search(r"messages (\d+) errors (\d+)", out)
    return {"requests": int(m.group(1)) if m else 0, "errors": int(m.group(2)) if m else conns}


def percentiles(log):
    durations = []
    with open(log) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1].startswith("2"):
                durations.append(int(parts[2]))
    durations.sort()
    if not durations:
        return None

    def pct(p):
        return durations[min(len(durations) - 1, int(len(durations) * p))]

    return {"p50": pct(0.50), "p99": pct(0.99), "p999": pct(0.999), "n": len(durations)}


POST_LUA = """
wrk.method = "POST"
wrk.body = string.rep("x", 16384)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def workloads(tmp, seconds):
    lua = os.path.join(tmp, "post.lua")
    with open(lua, "w") as f:
        f.write(POST_LUA)
    return [
        ("small GET keep-alive (64 conns)", lambda t: wrk(t.port, "/small", seconds, 64)),
        ("1 MiB GET (8 conns)", lambda t: wrk(t.port, "/1m", seconds, 8)),
        ("new connection per request", lambda t: wrk(t.port, "/small", seconds, 16, ("-H", "Connection: close"))),
        ("16 KiB POST (64 conns)", lambda t: wrk(t.port, "/post", seconds, 64, ("-s", lua))),
        ("HTTP/2 small GET (64 conns x 10 streams)", lambda t: h2load(t.h2_port, "/small", seconds, 64)),
        ("4-endpoint balanced small GET (64 conns)", lambda t: wrk(t.port, "/b/small", seconds, 64)),
        ("WebSocket echo, 32 B messages (64 conns; req = message echoed)", lambda t: ws_echo(t.port, seconds, 64)),
    ]


# ===== measurements =====


def measure(target, run, up_ports):
    """Run one workload against a live target: requests/s, CPU µs per request, upstream conns per 1k."""
    pid = target.pid if target.proc else None
    cpu0 = cpu_seconds(pid) if pid else 0.0
    conns0 = upstream_connections(up_ports)
    t0 = time.time()
    result = run(target)
    elapsed = time.time() - t0
    cpu1 = cpu_seconds(pid) if pid else 0.0
    conns1 = upstream_connections(up_ports) - len(up_ports)  # the /_stats requests themselves
    n = max(result["requests"], 1)
    return {
        "rps": result["requests"] / elapsed if elapsed else 0,
        "cpu_us": (cpu1 - cpu0) * 1e6 / n if pid else None,
        "conns_per_1k": (conns1 - conns0) * 1000.0 / n,
        "errors": result["errors"],
    }


def idle_memory(target, count):
    # A few requests first, so that what a proxy sets up once, on its first request
    # (upstream connections, lazily built state), is in the baseline and not counted
    # as per-connection memory: ~0.25 KiB per connection for nginx over 8,000.
    for _ in range(3):
        http_get(target.port, "/small")
    time.sleep(0.5)
    idle = rss_kib(target.pid)
    holder = subprocess.Popen(
        ["taskset", "-c", OTHER_CORE, os.path.join(RELEASE, "bench-idle"), f"127.0.0.1:{target.port}", str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = holder.stdout.readline()
    # Idle connections, measured once idle: ours give back their HTTP/1.1 buffers after
    # `release_idle_buffers_after` (1 s); nginx frees its buffers at once.
    time.sleep(IDLE_SETTLE)
    loaded = rss_kib(target.pid) if line.startswith("idle") else None
    holder.stdin.close()
    holder.wait()
    per_conn = (loaded - idle) / count if loaded else None
    return idle, per_conn


def per_request_under(tool, target, tmp, small, large, argv=None):
    """Run the target (with `argv` instead of its own, if given) under valgrind `tool`
    (`callgrind`: instructions; `dhat`: heap allocations), serve `small` then `large` small
    GETs, and difference the totals (start-up and shutdown cancel out). Every process
    (nginx's and haproxy's workers are children) writes its own file; they are summed."""
    totals = []
    saved = target.argv
    if argv:
        target.argv = argv
    try:
        for n in (small, large):
            out = os.path.join(tmp, f"{tool}.{target.name}.{n}")
            if tool == "callgrind":
                files = (f"--callgrind-out-file={out}.%p",)
            else:
                files = ("--dhat-out-file=/dev/null", f"--log-file={out}.%p")
            target.start(wrapper=("valgrind", f"--tool={tool}", "--trace-children=yes", *files))
            subprocess.run(
                ["h2load", "--h1", "-c8", f"-n{n}", f"http://127.0.0.1:{target.port}/small"],
                capture_output=True,
            )
            target.stop()
            total = 0
            for name in os.listdir(tmp):
                if name.startswith(os.path.basename(out) + "."):
                    text = open(os.path.join(tmp, name), errors="replace").read()
                    total += valgrind_total(tool, text)
            totals.append(total)
    finally:
        target.argv = saved
    return (totals[1] - totals[0]) / (large - small) if totals[1] > totals[0] else None


def single_process(target):
    """The argv to run `target` under valgrind with, when its own will not do: nginx's
    worker, forked by the master and switched to an unprivileged user (nginx does so when
    started as root), cannot write its dump into our temporary directory, so nginx runs
    as one process (no master, no user switch) there; None for the others."""
    if target.name == "nginx":
        return [*target.argv, "-g", "master_process off;"]
    return None


def valgrind_total(tool, text):
    """The instructions (callgrind's output file) or heap blocks (dhat's log) in `text`."""
    if tool == "callgrind":
        found = re.search(r"^(?:summary|totals): (\d+)", text, re.MULTILINE)
        return int(found.group(1)) if found else 0
    found = re.search(r"Total:\s+[\d,]+ bytes in ([\d,]+) blocks", text)
    return int(found.group(1).replace(",", "")) if found else 0


# ===== report =====


def ratio(value, base):
    if value is None or not base:
        return "–"
    r = value / base
    return f"{r:.2f}×"


def fmt(v, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}{unit}" if v < 1000 else f"{v:,.0f}{unit}"
    return f"{v}{unit}"


def versions():
    def first(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "?"
    return {
        "nginx": first(["nginx", "-v"]),
        "haproxy": first(["haproxy", "-v"]),
        "wrk": first(["wrk", "--version"]),
        "h2load": first(["h2load", "--version"]),
        "rustc": first(["rustc", "--version"]),
        "kernel": os.uname().release,
        "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="smoke run: short, one round, no callgrind")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--idle", type=int, default=8000,
                    help="idle client connections for the memory figure (8,000: this sandbox caps open files at 20,000 and haproxy needs two per connection)")
    ap.add_argument("--output", default=os.path.join(ROOT, "bench", "README.md"))
    args = ap.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.idle = 2, 1, 500

    tmp = tempfile.mkdtemp(prefix="arp-bench-")
    os.chmod(tmp, 0o755)  # nginx's worker runs as www-data
    # Four upstream processes: every target sends `/b/…` round robin over all four (the
    # balanced workload), everything else to the first.
    upstreams = []
    for _ in range(4):
        p = free_port()
        upstreams.append(Target("upstream", [os.path.join(RELEASE, "bench-upstream"), f"127.0.0.1:{p}"],
                                p, core=OTHER_CORE))
        upstreams[-1].start()
        atexit.register(upstreams[-1].stop)  # also on an error: they run in their own session
    up_ports = [u.port for u in upstreams]
    up_port = up_ports[0]
    direct = Target("direct", [], up_port)
    targets = [direct, nginx_target(tmp, up_ports), haproxy_target(tmp, up_ports),
               ours_target(tmp, up_ports), embedded_target(up_ports)]
    proxies = targets[1:]
    results = {}  # (workload, target) -> list of measurements
    try:
        for t in proxies:
            t.start()
        loads = workloads(tmp, args.seconds)
        for rnd in range(args.rounds):
            for name, run in loads:
                for t in targets:
                    m = measure(t, run, up_ports) if t is not direct else dict(measure(t, run, up_ports), cpu_us=None)
                    results.setdefault((name, t.name), []).append(m)
                    print(f"round {rnd + 1} {name:42} {t.name:9} {m['rps']:>10,.0f} req/s "
                          f"cpu/req {fmt(m['cpu_us'], 'µs'):>8} upstream conns/1k {m['conns_per_1k']:.2f}"
                          f" errors {m['errors']}", flush=True)

        # Latency at a fixed rate: 50 % of nginx's small-GET maximum, open loop.
        nginx_max = statistics.median(m["rps"] for m in results[(loads[0][0], "nginx")])
        rate = max(int(nginx_max * 0.5), 64)
        latency = {}
        for rnd in range(args.rounds):
            for t in targets:
                log = os.path.join(tmp, f"lat.{t.name}.{rnd}")
                h2load(t.port, "/small", args.seconds, 64, h1=True, rps=max(rate // 64, 1), log=log)
                p = percentiles(log)
                if p:
                    latency.setdefault(t.name, []).append(p)

        # Memory on fresh processes: after the load rounds, memory the allocators kept from
        # the busy phase absorbs new connections and hides their cost.
        memory = {}
        for t in proxies:
            t.stop()
            t.start()
            memory[t.name] = idle_memory(t, args.idle)
    finally:
        for t in proxies:
            t.stop()

    instructions = {}
    if not args.quick and shutil.which("valgrind"):
        for t in proxies:
            try:
                ipr = per_request_under("callgrind", t, tmp, 1000, 3000, single_process(t))
                # A target whose worker left no dump: what is left is its master's few
                # instructions, which is no figure.
                instructions[t.name] = ipr if ipr is not None and ipr >= 100 else None
            except Exception as err:  # a target that will not run under valgrind: report, go on
                print(f"callgrind {t.name}: {err}", file=sys.stderr)
                t.stop()
    allocations = {}
    if not args.quick and shutil.which("valgrind"):
        sysalloc = os.path.join(RELEASE, "axum-reverse-proxy-sysalloc")
        for t in proxies:
            argv = single_process(t)
            if t.argv and t.argv[0].endswith("/axum-reverse-proxy"):
                if not os.path.exists(sysalloc):
                    continue
                argv = [sysalloc, *t.argv[1:]]
            try:
                allocations[t.name] = per_request_under("dhat", t, tmp, 1000, 3000, argv)
            except Exception as err:
                print(f"dhat {t.name}: {err}", file=sys.stderr)
                t.stop()
    for u in upstreams:
        u.stop()

    # ===== the table =====
    lines = []
    v = versions()
    lines.append(f"## Load benchmark — {datetime.date.today().isoformat()}\n")
    lines.append(f"Command: `bench/run.sh {' '.join(sys.argv[1:])}` — {args.rounds} round(s) × {args.seconds} s per "
                 f"target and workload, targets interleaved; medians shown. Each proxy alone on core {PROXY_CORE}, "
                 f"load generator and upstream on core {OTHER_CORE}.\n")
    lines.append("Versions: " + "; ".join(f"{k} {val}" for k, val in v.items()) + "\n")
    for name, _ in workloads(tmp, args.seconds):
        base = results.get((name, "nginx"))
        base_rps = statistics.median(m["rps"] for m in base) if base else None
        base_cpu = statistics.median(m["cpu_us"] for m in base) if base else None
        lines.append(f"\n### {name}\n")
        lines.append("| target | req/s | vs nginx | CPU µs/req | vs nginx | upstream conns per 1k req | non-2xx |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for t in targets:
            ms = results.get((name, t.name), [])
            if not ms:
                continue
            rps = statistics.median(m["rps"] for m in ms)
            cpus = [m["cpu_us"] for m in ms if m["cpu_us"] is not None]
            cpu = statistics.median(cpus) if cpus else None
            conns = statistics.median(m["conns_per_1k"] for m in ms)
            errs = sum(m["errors"] for m in ms)
            lines.append(f"| {t.name} | {fmt(rps)} | {ratio(rps, base_rps)} | {fmt(cpu)} | "
                         f"{ratio(cpu, base_cpu)} | {conns:.2f} | {errs} |")
    lines.append(f"\n### Latency at a fixed {rate:,} req/s (50 % of nginx's small-GET maximum), HTTP/1.1, 64 conns\n")
    lines.append("| target | p50 µs | p99 µs | p99.9 µs | p99 vs nginx |")
    lines.append("|---|---:|---:|---:|---:|")
    base_p99 = statistics.median(p["p99"] for p in latency["nginx"]) if "nginx" in latency else None
    for t in targets:
        ps = latency.get(t.name)
        if not ps:
            continue
        p50, p99, p999 = (statistics.median(p[k] for p in ps) for k in ("p50", "p99", "p999"))
        lines.append(f"| {t.name} | {p50:,.0f} | {p99:,.0f} | {p999:,.0f} | {ratio(p99, base_p99)} |")
    lines.append(f"\n### Memory: RSS idle and per idle keep-alive client connection ({args.idle:,} connections, measured after {IDLE_SETTLE} s idle)\n")
    lines.append("| target | RSS idle KiB | KiB per idle connection | vs nginx |")
    lines.append("|---|---:|---:|---:|")
    base_mem = memory.get("nginx", (None, None))[1]
    for name, (idle, per) in memory.items():
        lines.append(f"| {name} | {idle:,} | {fmt(per)} | {ratio(per, base_mem)} |")
    if instructions:
        lines.append("\n### Instructions per small GET (callgrind, HTTP/1.1 keep-alive, difference of 3,000 and 1,000 requests)\n")
        lines.append("| target | instructions/req | vs nginx |")
        lines.append("|---|---:|---:|")
        for name, ipr in instructions.items():
            lines.append(f"| {name} | {fmt(ipr)} | {ratio(ipr, instructions.get('nginx'))} |")
    if allocations:
        lines.append("\n### Heap allocations per small GET (valgrind dhat, HTTP/1.1 keep-alive, difference of 3,000 and 1,000 requests)\n")
        lines.append("nginx and haproxy allocate from their own pools, so few of their allocations reach malloc.\n")
        lines.append("| target | allocations/req |")
        lines.append("|---|---:|")
        for name, apr in allocations.items():
            lines.append(f"| {name} | {fmt(apr)} |")
    for log in ("nginx-error.log",):
        path = os.path.join(tmp, log)
        if os.path.exists(path) and os.path.getsize(path):
            lines.append(f"\nLast lines of {log}:\n```\n" + "".join(open(path).readlines()[-5:]) + "```")
    report = "\n".join(lines) + "\n"
    print(report)
    if not args.quick:
        write_report(args.output, report)
    shutil.rmtree(tmp, ignore_errors=True)


MARK_BEGIN = "<!-- load-benchmark:begin -->"
MARK_END = "<!-- load-benchmark:end -->"


def write_report(path, report):
    text = open(path).read() if os.path.exists(path) else ""
    block = f"{MARK_BEGIN}\n{report}{MARK_END}"
    if MARK_BEGIN in text and MARK_END in text:
        text = text[: text.index(MARK_BEGIN)] + block + text[text.index(MARK_END) + len(MARK_END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
