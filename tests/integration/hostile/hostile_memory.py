#!/usr/bin/env python3
"""Memory a client can pin on a delivery server (security review H2) and the
per-connection message rate limit (L7), against real processes:

  10 connections send 100,000 protocol pings each and never read
      -> the server's RSS stays within what the limits promise (below), the
         connections stay open with one pong queued each (rate limit off) or
         are closed with 1008 (rate limit on)
  pings while nobody reads           -> at most one unsent pong per connection,
                                        answering the latest ping (RFC 6455 5.5.3);
                                        the same for {"type":"ping"}
  replies that cannot be collapsed   -> reading stops above --read-pause-bytes
                                        and resumes when the client reads; no
                                        message is lost
  a client over --client-msg-rate    -> close 1008 "rate limit exceeded"
  an incomplete frame                -> counted in rx_buffered_bytes until it goes
  a burst within --client-msg-burst and a steady rate below the limit -> fine
while a well-behaved client on the flooded server keeps receiving, in order,
every message accepted through ingest.

The memory bound. Every queued frame is charged what it really costs (its
allocation and queue slot, see frame_cost() in delivery/conn.c) against
--outq-max-bytes, and a connection holds at most 2 x 128 KiB of partial
input (a frame of up to --max-frame-bytes 64 KiB and a message being
reassembled, each in a power-of-two buffer). So N hostile connections may
add at most N x (outq-max-bytes + 256 KiB) to the RSS, plus slack for the
allocator and everything else the server does meanwhile (8 MiB). Under
ASan every allocation carries redzones and shadow memory: the bound is
doubled there. Before the fix the 10 x 100,000 pings added about 37 MiB to
the RSS (one 32-byte allocation and an 8-byte slot per 2-byte pong)."""

import os
import socket
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hostile_lib as hl  # noqa: E402
from hostile_lib import ft, frame  # noqa: E402

NCONN = 10
NPINGS = 100_000
OUTQ_MAX = 1 << 20          # the default --outq-max-bytes
RX_MAX = 2 * 128 * 1024     # partial input per connection (see above)
SLACK = 8 << 20
ASAN = "ASAN_OPTIONS" in os.environ
RATE, BURST = 20, 50        # d2's limits

S = {}


def d1():
    """No message rate limit: only accounting, backpressure and collapsing
    bound what a client pins here."""
    return S["d1"]


def d2():
    return S["d2"]


def m(pr, name):
    return hl.metrics(pr).get("fanout_delivery_" + name, 0)


def rss(pr):
    with open("/proc/%d/status" % pr.pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for %d" % pr.pid)


class RssSampler:
    """The highest RSS of pr seen while it runs (every 20 ms)."""

    def __init__(self, pr):
        self.pr, self.peak, self.stop = pr, rss(pr), threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, rss(self.pr))
            except (OSError, AssertionError):
                return  # the process is gone (a failed test's leftovers)
            time.sleep(0.02)

    def done(self):
        self.stop.set()
        self.t.join()
        self.peak = max(self.peak, rss(self.pr))
        return self.peak


def server_rx_queue(pr, client_port):
    """Bytes the server has not read yet from the connection whose client
    end is client_port (/proc/net/tcp of the server's socket), or None
    when that socket is gone."""
    want_local = "%04X" % pr.port
    want_remote = "%04X" % client_port
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            parts = line.split()
            local, remote, st, queues = parts[1], parts[2], parts[3], parts[4]
            if local.endswith(":" + want_local) and remote.endswith(":" + want_remote) \
                    and st == "01":
                return int(queues.split(":")[1], 16)
    return None


def deaf_client(pr, sub, rcvbuf=4096):
    """An upgraded raw socket with a tiny receive window, not read from."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(ft.scaled(5))
    s.connect((pr.host, pr.port))
    s.sendall(("GET /ws?token=%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n" % hl.token(sub)).encode())
    c = hl.RawWs.__new__(hl.RawWs)
    c.sock = s
    c.status, c.headers, c.body, c.buf = hl.read_response(s)
    assert c.status == 101, (c.status, c.body)
    c.read_welcome()
    return c


def send_all(c, data, seconds=30):
    """Sends data unless the server stops reading for `seconds`; returns the
    bytes that went out."""
    c.sock.settimeout(ft.scaled(seconds))
    view, sent = memoryview(data), 0
    try:
        while sent < len(data):
            sent += c.sock.send(view[sent:sent + 262144])
    except (socket.timeout, OSError):
        pass
    return sent


def bystander_alive():
    b = S["by"]
    n = len(b.accepted)
    ft.eventually(lambda: len(b.accepted) > n + 1, timeout=10, what="ingest accepting")
    want = b.accepted[-1]
    b.wait_for(lambda msg: msg.get("data", {}).get("seq") == want, timeout=10,
               what="seq %d" % want)
    S["stack"].check_alive()


def setup_module():
    """The stack the tests share (not a test: ft.run_tests runs it first)."""
    st = S["stack"] = hl.Stack(partitions=4)
    S["d1"] = st.delivery("m1", "--client-msg-rate", "0")
    S["d2"] = st.delivery("m2", "--client-msg-rate", str(RATE), "--client-msg-burst", str(BURST))
    S["i1"] = st.ingest("i1")
    st.wait_assigned()
    S["by"] = hl.Bystander(d1().addr, S["i1"].addr, interval=0.05)
    S["by"].start_sending()
    S["by"].wait_for(lambda msg: True, timeout=20, what="first message")


def ping_flood(pr, subs):
    """NCONN deaf clients each send NPINGS empty masked pings (6 bytes) in
    big writes, at the same time. Returns (clients, bytes sent each)."""
    ping = frame(0x9, b"", mask=b"\x11\x22\x33\x44")
    data = ping * NPINGS
    clients = [deaf_client(pr, s) for s in subs]
    sent = [0] * len(clients)

    def run(k):
        sent[k] = send_all(clients[k], data)
    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(ft.scaled(120))
    return clients, sent


def test_ping_flood_of_clients_that_never_read_is_bounded():
    """No rate limit on d1: 10 x 100,000 pings are all read (the pongs
    collapse into one per connection, so nothing pauses), the connections
    stay open, and RSS grows by less than the bound."""
    pr = d1()
    base = rss(pr)
    open_before = m(pr, "connections")
    sampler = RssSampler(pr)
    clients, sent = ping_flood(pr, ["pinger%d" % k for k in range(NCONN)])
    # Wait until the server has read everything it will read.
    ports = [c.sock.getsockname()[1] for c in clients]
    ft.eventually(lambda: all(not server_rx_queue(pr, p) for p in ports), timeout=30,
                  what="the server reading every ping")
    queued = m(pr, "queued_bytes")
    peak = sampler.done()
    bound = NCONN * (OUTQ_MAX + RX_MAX) + SLACK
    if ASAN:
        bound *= 2
    ft.log("ping flood: sent %r bytes; RSS %d -> peak %d (+%d, bound +%d); queued %d" % (
        sent, base, peak, peak - base, bound, queued))
    assert peak - base <= bound, "RSS grew by %d bytes (bound %d) for %d x %d pings" % (
        peak - base, bound, NCONN, NPINGS)
    assert all(n == NPINGS * 6 for n in sent), "server stopped reading: %r" % sent
    # Still open, each holding at most a pong in flight and one unsent.
    assert m(pr, "connections") == open_before + NCONN
    assert queued <= NCONN * 2 * 256 + 4096, queued
    for c in clients:
        c.close()
    ft.eventually(lambda: m(pr, "connections") == open_before, timeout=10,
                  what="flood connections gone")
    bystander_alive()


def test_ping_flood_with_the_rate_limit_is_closed_with_1008():
    pr = d2()
    limited = m(pr, "rate_limited_total")
    base = rss(pr)
    sampler = RssSampler(pr)
    clients, _sent = ping_flood(pr, ["rpinger%d" % k for k in range(NCONN)])
    ft.eventually(lambda: m(pr, "rate_limited_total") - limited == NCONN, timeout=10,
                  what="%d connections rate limited" % NCONN)
    peak = sampler.done()
    bound = NCONN * (OUTQ_MAX + RX_MAX) + SLACK
    assert peak - base <= (2 * bound if ASAN else bound), (base, peak)
    for c in clients:
        c.sock.settimeout(ft.scaled(5))
        c.expect_close(1008)
    bystander_alive()


def test_repeated_pings_never_queue_more_than_one_pong():
    """Pings with distinct payloads into a socket nobody reads: the server's
    queue holds one unsent pong (plus one in a write), and when the client
    reads, the pongs it gets are in order and the last answers the last
    ping."""
    pr = d1()
    c = deaf_client(pr, "collapse")
    n = 20000
    pings = b"".join(frame(0x9, b"%08d" % i + b"p" * 117, mask=b"\1\2\3\4") for i in range(n))
    worst = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            worst[0] = max(worst[0], m(pr, "queued_bytes"))
            time.sleep(0.02)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    sent = send_all(c, pings)
    port = c.sock.getsockname()[1]
    ft.eventually(lambda: not server_rx_queue(pr, port), timeout=20, what="all pings read")
    stop.set()
    t.join()
    worst[0] = max(worst[0], m(pr, "queued_bytes"))
    assert sent == len(pings), "server stopped reading after %d of %d bytes" % (sent, len(pings))
    # Two pongs (in flight and unsent) of 2 + 125 bytes cost 176 each; the
    # bystander may have a message or two queued at that moment.
    assert worst[0] <= 2 * 176 + 4096, "%d bytes queued while pinging" % worst[0]
    got = []
    c.sock.settimeout(ft.scaled(2))
    try:
        while True:
            op, payload = c.recv_frame()
            assert op == 0xA, op
            got.append(int(payload[:8]))
            if got[-1] == n - 1:
                break
    except socket.timeout:
        pass
    assert got and got[-1] == n - 1, "last pong %r, want %d" % (got[-1:], n - 1)
    assert got == sorted(set(got)), "pongs out of order or repeated"
    assert len(got) < n // 2, "%d pongs for %d pings: not collapsed" % (len(got), n)
    ft.log("%d pings answered by %d pongs" % (n, len(got)))
    # The same for {"type":"ping"}: pongs collapse, the connection stays.
    msg = frame(0x1, b'{"type":"ping"}', mask=b"\1\2\3\4")
    sent = send_all(c, msg * n)
    ft.eventually(lambda: not server_rx_queue(pr, port), timeout=20, what="all pings read")
    assert sent == len(msg) * n
    assert m(pr, "queued_bytes") <= 4096 + 2 * 64
    pongs = 0
    c.sock.settimeout(ft.scaled(2))
    try:
        while True:
            assert c.recv_json(2) == {"type": "pong"}
            pongs += 1
    except socket.timeout:
        pass
    assert 0 < pongs < n // 2, pongs
    c.send_text({"type": "ping"})
    assert c.recv_json() == {"type": "pong"}
    c.send(frame(0x8, struct.pack(">H", 1000)))
    c.expect_close(1000)
    bystander_alive()


def test_replies_that_do_not_collapse_pause_reading():
    """Messages answered with errors (which do not collapse), sent by a
    client that does not read: the server stops reading it once its queue
    passes --read-pause-bytes instead of queueing up to the 1 MiB limit,
    resumes when the client reads, and every message gets its answer."""
    pr = d1()
    pauses = m(pr, "read_pauses_total")
    slow = m(pr, "slow_client_closes_total")
    c = deaf_client(pr, "chatty")
    msg = frame(0x1, b'{"type":"nope"}', mask=b"\1\2\3\4")
    n = 100000
    data = msg * n
    sent = send_all(c, data, seconds=3)
    # The server stopped reading: what was sent waits in its socket.
    port = c.sock.getsockname()[1]
    ft.eventually(lambda: m(pr, "read_pauses_total") > pauses, timeout=5,
                  what="read_pauses_total")
    # Either the client's sends blocked (the server stopped reading), or
    # everything fitted in the kernel's buffers and what the server did not
    # read shows in its socket's receive queue (it can take a moment to get
    # there: loopback TCP still paces a fresh connection's first megabytes).
    ft.eventually(lambda: sent < len(data) or server_rx_queue(pr, port), timeout=5,
                  what="unread data in the server's socket (reading paused); rx queue %r, "
                  "queued %r" % (server_rx_queue(pr, port), m(pr, "queued_bytes")))
    assert m(pr, "queued_bytes") <= OUTQ_MAX, m(pr, "queued_bytes")
    # Now read: the rest goes out as the queue drains, every message answered.
    got = 0
    rest = memoryview(data)[sent:]
    c.sock.settimeout(ft.scaled(10))
    c.sock.setblocking(False)
    deadline = time.time() + ft.scaled(120)
    while got < n and time.time() < deadline:
        if len(rest):
            try:
                k = c.sock.send(rest[:65536])
                rest = rest[k:]
            except BlockingIOError:
                pass
        try:
            c.buf += c.sock.recv(1 << 20)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        while True:
            if len(c.buf) < 2:
                break
            ln = c.buf[1] & 0x7F
            if len(c.buf) < 2 + ln:
                break
            assert c.buf[0] == 0x81 and b"unknown message type" in c.buf[2:2 + ln], c.buf[:80]
            c.buf = c.buf[2 + ln:]
            got += 1
    c.sock.setblocking(True)
    assert got == n, "%d of %d messages answered" % (got, n)
    assert m(pr, "slow_client_closes_total") == slow
    c.sock.settimeout(ft.scaled(5))
    c.send(frame(0x8, struct.pack(">H", 1000)))
    c.expect_close(1000)
    bystander_alive()


def test_partial_input_is_counted():
    """Bytes held for an incomplete frame show in rx_buffered_bytes and are
    given back when the connection goes."""
    pr = d1()
    before = m(pr, "rx_buffered_bytes")
    c = hl.RawWs(pr.addr, hl.token("partial"))
    assert c.status == 101
    c.send(frame(0x1, b"x" * 40000)[:20000])  # half a frame
    ft.eventually(lambda: m(pr, "rx_buffered_bytes") - before >= 20000, timeout=5,
                  what="rx_buffered_bytes counting the partial frame")
    c.close()
    ft.eventually(lambda: m(pr, "rx_buffered_bytes") == before, timeout=5,
                  what="rx_buffered_bytes back to %d" % before)


def test_client_over_the_rate_is_closed_with_1008():
    pr = d2()
    limited = m(pr, "rate_limited_total")
    c = hl.RawWs(pr.addr, hl.token("fast"))
    assert c.status == 101
    c.send(frame(0x1, b'{"type":"ping"}') * (BURST + 10))
    reason = c.expect_close(1008)
    assert reason == b"rate limit exceeded", reason
    ft.eventually(lambda: m(pr, "rate_limited_total") == limited + 1, timeout=5,
                  what="rate_limited_total += 1")
    # Protocol pings count too.
    c = hl.RawWs(pr.addr, hl.token("fast"))
    c.send(frame(0x9, b"x") * (BURST + 1))
    c.expect_close(1008)


def test_burst_within_the_limit_and_a_steady_rate_are_fine():
    pr = d2()
    limited = m(pr, "rate_limited_total")
    c = hl.RawWs(pr.addr, hl.token("steady", rooms=["*"]))
    assert c.status == 101
    # Half the rate for 3 seconds: the bucket refills faster than it drains.
    t0 = time.time()
    k = 0
    while time.time() - t0 < 3:
        c.send_text({"type": "join", "room": "r%d" % k})
        assert ft.joined_reply(c.recv_json()) == {"type": "joined", "room": "r%d" % k}
        c.send_text({"type": "leave", "room": "r%d" % k})
        assert c.recv_json() == {"type": "left", "room": "r%d" % k}
        k += 1
        time.sleep(4.0 / RATE)
    assert k >= RATE // 4, k
    # Once the bucket is full again (the sweep refills it every 500 ms
    # here; a second is two refills of RATE/2), the whole bucket at once:
    # BURST joins in one write.
    time.sleep(1.0)
    c.send(b"".join(frame(0x1, b'{"type":"join","room":"r%d"}' % k) for k in range(BURST)))
    for k in range(BURST):
        assert ft.joined_reply(c.recv_json()) == {"type": "joined", "room": "r%d" % k}
    assert m(pr, "rate_limited_total") == limited
    c.send(frame(0x8, struct.pack(">H", 1000)))
    c.expect_close(1000)


def test_bystander_was_served_throughout():
    hl.check_bystander(S)


def test_clean_shutdown():
    hl.stop_cleanly(S)


def teardown_module():
    hl.teardown(S)


if __name__ == "__main__":
    ft.run_tests(globals(), only=sys.argv[1:] or None)
