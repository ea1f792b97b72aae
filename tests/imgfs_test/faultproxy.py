"""An HTTP proxy between imgfs and a real docker-registry that injects
faults into ranged blob reads: dropped connections, stalls, truncated bodies,
5xx and 429 answers, corrupted bytes; and, for requests of several ranges,
the answers of servers that do not send multipart/byteranges."""

import http.server
import threading
import time
import urllib.error
import urllib.request

MODES = ("drop", "stall", "truncate", "503", "429", "corrupt")
# What a request for several ranges gets: the whole blob (a server that ignores
# such a Range), the first range alone (object stores), or corrupted parts.
MULTI_MODES = ("whole", "first", "corrupt")


class FaultProxy:
    def __init__(self, upstream, stall_seconds=4):
        self.upstream = upstream
        self.stall_seconds = stall_seconds
        self.faults = []          # one-shot faults, applied in order
        self.always = None        # a fault applied to every ranged blob read
        self.injected = []
        self.multi = None         # one of MULTI_MODES for every request of several ranges
        self.multi_requests = 0
        # Corrupts the first answer for every blob (whole or ranged), as a
        # broken CDN node would; the second answer is right.
        self.corrupt_first_of_each = False
        self.corrupt_all_blobs = False  # a mirror that only ever serves bad bytes
        self.corrupted_blobs = set()
        # (bytes, seconds): a ranged read of more than bytes waits seconds
        # first, as a long background request on a slow link would; the
        # ranges asked for are recorded with whether they were held.
        self.hold_large = None
        # A function of (path, first byte): a ranged read waits while it
        # says True, looked at again on open_gate().
        self.gate = None
        # (bytes, seconds): the next ranged read of more than twice bytes
        # sends all but its last bytes at once and the rest seconds later,
        # as a long read on a slow link does; counted in held_now too.
        self.hold_tail = None
        # With it, every such read is held so, not only the next.
        self.hold_every_tail = False
        # (bytes, seconds): every whole blob answer larger than twice bytes
        # sends all but its last bytes at once and the rest seconds later;
        # whole_held_most counts the most held at the same time.
        self.hold_whole = None
        self.whole_held_now = self.whole_held_most = 0
        # Cuts the next whole blob answer larger than this many bytes at
        # half and drops the connection, as a link that fails midway; the
        # Range headers of blob requests are recorded in blob_ranges.
        self.missing_blobs = set()  # digests answered 404, as a registry that lost them
        self.cut_whole_once = None
        self.blob_ranges = []
        self.blob_bytes_sent = 0
        self.ranges = []
        self.requests = []  # (the client's port, naming its connection; path; Range or None), in order
        # ("ask" or "answer", first byte) of every ranged blob read, in the
        # order they happened: which reads were outstanding together.
        self.range_events = []
        self.held_now = 0
        self.lock = threading.Lock()
        self.gate_moved = threading.Condition(self.lock)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_GET(self):
                with proxy.lock:
                    proxy.requests.append((self.client_address[1], self.path, self.headers.get("Range")))
                if self.path.split("?")[0].rsplit("/", 1)[-1] in proxy.missing_blobs:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                fault = proxy.next_fault(self)
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "stall":
                    time.sleep(proxy.stall_seconds)
                    self.close_connection = True
                    return
                if fault in ("503", "429", "503-retry-after-2"):
                    self.send_response(int(fault[:3]))
                    if fault == "429":
                        self.send_header("Retry-After", "1")
                    elif fault == "503-retry-after-2":
                        self.send_header("Retry-After", "2")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {"Accept": self.headers.get("Accept", "*/*")}
                if self.headers.get("Range"):
                    headers["Range"] = self.headers["Range"]
                    if proxy.hold(headers["Range"], self.path):
                        with proxy.lock:
                            proxy.held_now -= 1
                if "," in headers.get("Range", ""):
                    with proxy.lock:
                        proxy.multi_requests += 1
                    if proxy.multi == "whole":
                        del headers["Range"]
                    elif proxy.multi == "first":
                        headers["Range"] = headers["Range"].split(",")[0]
                    elif proxy.multi == "corrupt":
                        fault = "corrupt"
                blob = self.path.split("?")[0]
                with proxy.lock:
                    if proxy.corrupt_all_blobs and "/blobs/" in blob:
                        proxy.corrupted_blobs.add(blob)
                        fault = "corrupt"
                    elif proxy.corrupt_first_of_each and "/blobs/" in blob and blob not in proxy.corrupted_blobs:
                        proxy.corrupted_blobs.add(blob)
                        fault = "corrupt"
                req = urllib.request.Request(f"http://{proxy.upstream}{self.path}", headers=headers)
                try:
                    with urllib.request.urlopen(req, timeout=60) as r:
                        body, status, rh = r.read(), r.status, r.headers
                except urllib.error.HTTPError as e:
                    body, status, rh = e.read(), e.code, e.headers
                if fault == "corrupt" and body:
                    body = bytearray(body)
                    body[len(body) // 2] ^= 0xFF
                    body = bytes(body)
                self.send_response(status)
                for h in ("Content-Type", "Docker-Content-Digest", "Content-Range"):
                    if rh.get(h):
                        self.send_header(h, rh[h])
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault == "trickle":  # a byte every 0.4 s: never stalled, never done
                    try:
                        for i in range(len(body)):
                            self.wfile.write(body[i:i + 1])
                            self.wfile.flush()
                            time.sleep(0.4)
                    except OSError:
                        pass
                    self.close_connection = True
                    return
                if fault == "truncate":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                with proxy.lock:
                    if "/blobs/" in blob:
                        proxy.blob_ranges.append(self.headers.get("Range"))
                    cut = (proxy.cut_whole_once is not None and status == 200 and "/blobs/" in blob
                           and len(body) > proxy.cut_whole_once)
                    if cut:
                        proxy.cut_whole_once = None
                    if "/blobs/" in blob:
                        proxy.blob_bytes_sent += len(body) // 2 if cut else len(body)
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                body = self.send_all_but_tail(body, proxy.take_hold_whole(self, status, len(body)), "whole_held_now")
                body = self.send_all_but_tail(body, proxy.take_hold_tail(status, len(body)), "held_now")
                self.wfile.write(body)

            def send_all_but_tail(self, body, tail, counter):
                """With tail = (bytes, seconds): sends all but the last bytes, waits,
                and counts the hold as over; returns what is left to send."""
                if not tail:
                    return body
                self.wfile.write(body[:-tail[0]])
                self.wfile.flush()
                time.sleep(tail[1])
                with proxy.lock:
                    setattr(proxy, counter, getattr(proxy, counter) - 1)
                return body[-tail[0]:]

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hold(self, range_header, path):
        """Records a Range; holds it when hold_large or gate says so.  True if
        held by hold_large."""
        spans = [p.split("-") for p in range_header.split("=", 1)[-1].split(",")]
        size = sum(int(b) - int(a) + 1 for a, b in spans if a.isdigit() and b.isdigit())
        held = self.hold_large is not None and size > self.hold_large[0]
        first = int(spans[0][0]) if spans[0][0].isdigit() else -1
        with self.lock:
            self.ranges.append((size, held))
            self.range_events.append(("ask", first))
            if held:
                self.held_now += 1
            while self.gate and self.gate(path, first):
                self.gate_moved.wait()
        if held:
            time.sleep(self.hold_large[1])
        with self.lock:
            self.range_events.append(("answer", first))
        return held

    def ranges_asked(self, blob):
        """The Range headers of the ranged reads of blob (a digest) asked for so far, in order."""
        with self.lock:
            return [rng for _, path, rng in self.requests if rng and f"/blobs/{blob}" in path]

    def open_gate(self, gate=None):
        """Sets gate (None: every read goes on) and lets the reads it no
        longer holds go on."""
        with self.lock:
            self.gate = gate
            self.gate_moved.notify_all()

    def take_hold_tail(self, status, size):
        """The hold_tail for this answer, if it gets one (once)."""
        with self.lock:
            tail = self.hold_tail
            if status != 206 or not tail or size <= 2 * tail[0]:
                return None
            if not self.hold_every_tail:
                self.hold_tail = None
            self.held_now += 1
            return tail

    def take_hold_whole(self, handler, status, size):
        """The hold_whole for this answer, if it gets one."""
        with self.lock:
            tail = self.hold_whole
            if (status != 200 or not tail or size <= 2 * tail[0] or handler.headers.get("Range")
                    or "/blobs/" not in handler.path):
                return None
            self.whole_held_now += 1
            self.whole_held_most = max(self.whole_held_most, self.whole_held_now)
            return tail

    def next_fault(self, handler):
        if "/blobs/" not in handler.path or not handler.headers.get("Range"):
            return None
        with self.lock:
            fault = self.faults.pop(0) if self.faults else self.always
            if fault:
                self.injected.append(fault)
            return fault

    def stop(self):
        self.open_gate()
        self.server.shutdown()
