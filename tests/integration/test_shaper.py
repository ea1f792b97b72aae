#!/usr/bin/env python3
"""The shaped link that the tests and tools/bench-link put between imgfs and
a registry (tests/imgfs_test/shaper.py): one response does or does not wait
behind another connection's, as its discipline says, and the link keeps
its rate either way.  Times are of a slow link (4 MB/s) with wide margins:
what is checked is which response comes first, not the machine's speed."""

import http.client
import http.server
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from imgfs_test.cases import Suite, run_file  # noqa: E402
from imgfs_test.shaper import ShapedLink  # noqa: E402

suite = Suite(needs_root=False)
RATE = 4e6
BIG, SMALL = 4_000_000, 40_000


class Sized(http.server.BaseHTTPRequestHandler):
    """GET /N answers N bytes."""

    def do_GET(self):
        n = int(self.path.lstrip("/"))
        self.send_response(200)
        self.send_header("Content-Length", str(n))
        self.end_headers()
        self.wfile.write(b"x" * n)

    def log_message(self, *args):
        pass


@suite.setup
def setup(t):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sized)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    t.on_exit(server.shutdown)
    t.port = server.server_address[1]


def fetch(port, n, done):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/{n}")
    got = len(conn.getresponse().read())
    done[n] = (time.monotonic(), got)
    conn.close()


def big_then_small(t, fair):
    """When the small and the big response were through, from when the small one was asked."""
    link = ShapedLink(t.port, rtt=0.02, rate=RATE, fair=fair)
    t.on_exit(link.stop)
    done = {}
    start = time.monotonic()
    big = threading.Thread(target=fetch, args=(link.port, BIG, done))
    big.start()
    time.sleep(0.2)  # the big response is on the link
    asked = time.monotonic()
    fetch(link.port, SMALL, done)
    big.join()
    return done[SMALL][0] - asked, done[BIG][0] - start, done[SMALL][1] == SMALL and done[BIG][1] == BIG


@suite.case
def fair_link_takes_turns(t):
    small, big, whole = big_then_small(t, fair=True)
    # The small one shares the link with the big one: 40 KB at half of
    # 4 MB/s and a round trip is 0.04 s; behind the big one it would be 0.8 s.
    t.tap.ok(whole and small < 0.4, "on the fair link a small response asked after a big one is through first",
             (small, big))
    t.tap.ok(0.9 < big < 1.6, "and the link still carries 4 MB in about a second", big)


@suite.case
def fifo_link_queues_behind(t):
    small, big, whole = big_then_small(t, fair=False)
    t.tap.ok(whole and small > 0.6, "on the FIFO link a small response waits behind the big one's bytes",
             (small, big))
    t.tap.ok(0.9 < big < 1.6, "and the link carries 4 MB in about a second", big)


if __name__ == "__main__":
    run_file(suite)
