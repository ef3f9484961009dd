#!/usr/bin/env python3
"""Steady load for the failover benchmark (stdlib only).

Runs CONC threads against a proxy for DURATION seconds, each looping over
GET /api/v1/search and POST /api/v1/chat (extractive: no model time) on a
keep-alive connection. At KILL_AT seconds it sends SIGKILL to KILL_PID.
Prints one JSON object: requests, failures (with the first few reasons),
latency percentiles overall and in the 5 s after the kill, the kill's epoch
time, and the time from the kill to the last failed request.

  load.py --url http://127.0.0.1:18080 --duration 20 --conc 8 --kill-at 8 --kill-pid 1234
"""
import argparse
import http.client
import json
import os
import signal
import threading
import time
import urllib.parse


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * (len(xs) - 1)))))
    return xs[k]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--duration", type=float, default=20)
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--kill-at", type=float, default=8)
    ap.add_argument("--kill-pid", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30)
    a = ap.parse_args()
    u = urllib.parse.urlparse(a.url)
    host, port = u.hostname, u.port or 80
    start = time.time()
    end = start + a.duration
    results = []  # (t_start, latency_s, ok, reason)
    lock = threading.Lock()
    killed = {"at": None}

    def worker(w):
        conn = None
        i = 0
        local = []
        chat = json.dumps({"message": "What does the zorblax reactor run on?",
                           "generator": "extractive"})
        while time.time() < end:
            i += 1
            if conn is None:
                conn = http.client.HTTPConnection(host, port, timeout=a.timeout)
            t0 = time.time()
            try:
                if (w + i) % 2 == 0:
                    conn.request("GET", "/api/v1/search?query=zorblax%20reactor&top_k=3")
                else:
                    conn.request("POST", "/api/v1/chat", body=chat,
                                 headers={"Content-Type": "application/json"})
                r = conn.getresponse()
                body = r.read()
                ok = 200 <= r.status < 300
                reason = None if ok else f"{r.status} {body[:120]!r}"
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except Exception as e:  # noqa: BLE001 - any failure counts
                ok, reason = False, f"{type(e).__name__}: {e}"
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass
                conn = None
            local.append((t0, time.time() - t0, ok, reason))
        with lock:
            results.extend(local)

    def killer():
        if not a.kill_pid:
            return
        time.sleep(max(0.0, start + a.kill_at - time.time()))
        killed["at"] = time.time()
        try:
            os.kill(a.kill_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(a.conc)]
    threads.append(threading.Thread(target=killer))
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    lat = [r[1] * 1000 for r in results if r[2]]
    fails = [r for r in results if not r[2]]
    out = {
        "requests": len(results),
        "failures": len(fails),
        "failure_examples": sorted({r[3] for r in fails})[:5],
        "rps": round(len(results) / a.duration, 1),
        "p50_ms": percentile(lat, 50),
        "p99_ms": percentile(lat, 99),
        "kill_epoch": killed["at"],
    }
    if killed["at"]:
        k = killed["at"]
        window = [r[1] * 1000 for r in results if k <= r[0] < k + 5]
        out["p99_kill_window_ms"] = percentile(window, 99)
        out["max_kill_window_ms"] = max(window) if window else None
        late = [r[0] + r[1] for r in fails if r[0] + r[1] >= k]
        out["last_failure_after_kill_s"] = round(max(late) - k, 3) if late else None
    for key in ("p50_ms", "p99_ms", "p99_kill_window_ms", "max_kill_window_ms"):
        if out.get(key) is not None:
            out[key] = round(out[key], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
