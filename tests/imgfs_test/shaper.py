"""A shaped link in userspace (this kernel has no netem): a TCP proxy on
loopback that delays every byte by half the round trip in each direction
and lets through at most `rate` bytes per second per direction, shared by
all connections, as one link would: one FIFO queue, or with fair the
connections taking turns (see _Direction).  It counts the HTTP requests that
cross it and the most that were outstanding at once (a request is
outstanding from its first byte until its response, sized by
Content-Length, has been delivered), and logs each (`log`): its request
line, when it went out, when its response was through, and the bytes of
its body; and counts the connections (`connections`) and those that
opened with a TLS hello (`tls_hellos`).  With connect_rtt, a connection
carries its first byte a round trip after it was opened, as after TCP's
handshake on a real link; the proxy itself accepts at once."""

import asyncio
import collections
import re
import socket
import threading
import time

# What the link serialises and delivers as one piece: a piece's first byte
# arrives only after all of it has been sent (1.3 ms at 100 Mbit/s), where a
# link of 1500-byte packets would deliver it at once.
SEGMENT = 16384


# How late the fair link's sender may wake for a segment and still count
# its time from when the segment was due: the event loop's timers are
# coarser than a segment's 1.3 ms, and counting from each late wake-up
# would lower the rate.
SLACK = 0.005


class _Direction:
    """One direction of the link: a serialising rate, then a fixed delay.
    FIFO: every segment is sent in the order the far end produced it, so a
    response waits behind all of one produced before it on any connection,
    as at a bottleneck whose buffer holds all of it (this proxy reads its
    upstream at once, where TCP's window would bound what a connection has
    queued).  Fair: the connections with segments waiting take turns, a
    segment each, as a bottleneck with flow queueing (fq_codel, cake)
    serves flows."""

    def __init__(self, rate, delay, fair):
        self.rate, self.delay, self.fair = rate, delay, fair
        self.free_at = 0.0
        self.waiting = collections.OrderedDict()  # flow -> its segments (size, put)
        self.kick = None

    def _take_turn(self, n):
        now = time.monotonic()
        self.free_at = (self.free_at if self.fair and now - self.free_at < SLACK else max(self.free_at, now)) \
            + n / self.rate
        return self.free_at + self.delay

    def send(self, flow, n, put):
        """Sends n bytes of flow: put(at) is called with when they arrive."""
        if not self.fair:
            put(self._take_turn(n))
            return
        self.waiting.setdefault(flow, collections.deque()).append((n, put))
        self.kick.set()

    async def transmit(self):
        self.kick = asyncio.Event()
        while True:
            if not self.waiting:
                self.kick.clear()
                await self.kick.wait()
                continue
            flow, segments = next(iter(self.waiting.items()))
            n, put = segments.popleft()
            del self.waiting[flow]
            if segments:
                self.waiting[flow] = segments  # behind the others: its turn is over
            put(self._take_turn(n))
            wait = self.free_at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)


class ShapedLink:
    def __init__(self, upstream_port, rtt=0.020, rate=100e6 / 8, connect_rtt=False, fair=False):
        self.upstream_port = upstream_port
        self.connect_delay = rtt if connect_rtt else 0
        self.connections = 0
        self.up = _Direction(rate, rtt / 2, fair)
        self.down = _Direction(rate, rtt / 2, fair)
        self.requests = 0
        self.outstanding = 0
        self.max_outstanding = 0
        self.bytes_down = 0
        self.log = []
        self.tls_hellos = 0
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        self.port = listener.getsockname()[1]
        self.host = f"127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._listener = listener
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        asyncio.set_event_loop(self.loop)
        if self.up.fair:
            self._senders = [self.loop.create_task(d.transmit()) for d in (self.up, self.down)]
        self.server = self.loop.run_until_complete(asyncio.start_server(self._serve, sock=self._listener))
        self.loop.run_forever()

    def counters(self):
        return {"requests": self.requests, "max_outstanding": self.max_outstanding, "bytes_down": self.bytes_down,
                "connections": self.connections}

    def reset(self):
        self.requests = self.max_outstanding = self.bytes_down = self.tls_hellos = self.connections = 0
        self.log = []

    async def _pump(self, reader, writer, direction, on_data):
        queue = asyncio.Queue()

        async def deliver():
            while True:
                item = await queue.get()
                if item is None:
                    break
                at, data = item
                wait = at - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if writer.is_closing():
                    continue  # the peer went away: drop what is queued
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, RuntimeError):
                    continue
                on_data(data, delivered=True)
        sender = asyncio.ensure_future(deliver())
        try:
            while not writer.is_closing():
                data = await reader.read(SEGMENT)
                if not data:
                    break
                on_data(data, delivered=False)
                direction.send(queue, len(data), lambda at, data=data: queue.put_nowait((at, data)))
        except ConnectionError:
            pass
        direction.send(queue, 0, lambda at: queue.put_nowait(None))  # after what is still waiting its turn
        await sender
        try:
            writer.write_eof()
        except (OSError, RuntimeError):
            pass

    async def _serve(self, client_reader, client_writer):
        self.connections += 1
        if self.connect_delay:
            await asyncio.sleep(self.connect_delay)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        # Nagle's algorithm would hold a small write (a response's body
        # after its header) for the peer's delayed ack, 40 ms here: a link
        # does not.
        for w in (client_writer, up_writer):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state = {"header": b"", "body_left": 0, "open": 0, "methods": [], "logged": [], "first": True}

        def from_client(data, delivered):
            if delivered:
                return
            if state["first"]:
                state["first"] = False
                self.tls_hellos += data[:2] == b"\x16\x03"  # a TLS handshake record
            for m in re.finditer(rb"(?:^|\r\n)(GET|HEAD|PUT|POST|PATCH|DELETE) /", data):
                self.requests += 1
                state["open"] += 1
                state["methods"].append(m.group(1))
                line = data[m.start():].lstrip().split(b"\r\n", 1)[0].decode(errors="replace")
                state["logged"].append({"request": line, "start": time.monotonic(), "end": None, "bytes": 0})
                self.log.append(state["logged"][-1])
                self.outstanding += 1
                self.max_outstanding = max(self.max_outstanding, self.outstanding)

        def to_client(data, delivered):
            if not delivered:
                return
            self.bytes_down += len(data)
            while data and state["open"]:
                if state["body_left"] == 0 and b"\r\n\r\n" not in state["header"]:
                    state["header"] += data
                    end = state["header"].find(b"\r\n\r\n")
                    if end < 0:
                        return
                    head, data = state["header"][:end], state["header"][end + 4:]
                    m = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
                    method = state["methods"][0] if state["methods"] else b"GET"
                    state["body_left"] = int(m.group(1)) if m and method != b"HEAD" else 0
                    if state["logged"]:
                        state["logged"][0]["bytes"] = state["body_left"]
                    state["header"] = b""
                    if state["body_left"] == 0:
                        self._done(state)
                        continue
                take = min(len(data), state["body_left"])
                state["body_left"] -= take
                data = data[take:]
                if state["body_left"] == 0:
                    self._done(state)

        await asyncio.gather(self._pump(client_reader, up_writer, self.up, from_client),
                             self._pump(up_reader, client_writer, self.down, to_client))
        self.outstanding -= state["open"]
        client_writer.close()
        up_writer.close()

    def _done(self, state):
        state["open"] -= 1
        if state["methods"]:
            state["methods"].pop(0)
        if state["logged"]:
            state["logged"].pop(0)["end"] = time.monotonic()
        self.outstanding -= 1

    def stop(self):
        def cancel_all():
            # Their cancellation runs before the loop stops: no task is left pending.
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.loop.call_soon(self.loop.stop)
        self.loop.call_soon_threadsafe(cancel_all)
        self._thread.join(timeout=5)
