#!/usr/bin/env python3
"""Writes the seed corpora under tests/fuzz/corpus/<target>/ (small, one
file per seed, named by content hash) from the formats each target reads
(see the comment at the top of each fuzz_*.c). Run it after changing a
target's input format: `python3 tests/fuzz/make_seeds.py`. The envelope seeds
come from schemas/vectors/envelope.tsv (valid and invalid vectors)."""

import base64
import hashlib
import hmac
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SECRET = b"fuzz-secret-0123456789abcdef-0123456789"  # FZ_SECRET in fz_delivery.h


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(header, claims, secret=SECRET):
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    sig = hmac.new(secret, signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def mask_frame(op, payload, fin=True, mask=b"\x11\x22\x33\x44", rsv=0, masked=True):
    b0 = (0x80 if fin else 0) | rsv | op
    n = len(payload)
    if n < 126:
        hdr = bytes([b0, (0x80 if masked else 0) | n])
    elif n <= 0xFFFF:
        hdr = bytes([b0, (0x80 if masked else 0) | 126]) + struct.pack(">H", n)
    else:
        hdr = bytes([b0, (0x80 if masked else 0) | 127]) + struct.pack(">Q", n)
    if not masked:
        return hdr + payload
    return hdr + mask + bytes(c ^ mask[i & 3] for i, c in enumerate(payload))


def envelope_vectors():
    out = []
    with open(os.path.join(ROOT, "schemas", "vectors", "envelope.tsv")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            out.append(bytes.fromhex(cols[2]))
    return out


UPGRADE = ("GET /ws?token=%T% HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
           "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
           "Sec-WebSocket-Version: 13\r\n\r\n")


def http_seeds():
    reqs = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/send HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 27\r\n\r\n"
        b'{"user":"alice","data":{}}\n',
        b"POST /v1/batch HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\n{\"mes\r\n3\r\nsag\r\n0\r\n\r\n",
        b"GET /a HTTP/1.1\r\n\r\nGET /b?x=1&token=a%20b+c HTTP/1.1\r\nConnection: close\r\n\r\n",
        UPGRADE.replace("%T%", "abc").encode() + b"\x81\x80\x00\x00\x00\x00",
        b"GET /v1/presence/al%2Fice HTTP/1.0\r\n\r\n",
        b"BREW / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: " + b"a" * 300 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ]
    seeds = []
    for i, r in enumerate(reqs):
        seeds.append(bytes([8, 8, 0xff]) + r)
        seeds.append(bytes([2, 1, i * 7 % 64]) + r)
    return seeds


def ws_seeds():
    s = [
        mask_frame(1, b'{"type":"ping"}'),
        mask_frame(2, b"\x00\x01\x02"),
        mask_frame(1, b"hel", fin=False) + mask_frame(9, b"p") + mask_frame(0, b"lo"),
        mask_frame(8, struct.pack(">H", 1000) + b"bye"),
        mask_frame(8, b"\x03"),
        mask_frame(1, b"x" * 200),
        mask_frame(1, b"x" * 70000),
        mask_frame(1, b"\xff\xfe"),
        mask_frame(1, b"caf\xc3\xa9", fin=False) + mask_frame(0, b"\xa9"),
        mask_frame(1, b"x", masked=False),
        mask_frame(1, b"x", rsv=0x40),
        mask_frame(3, b""),
        mask_frame(9, b"p" * 126),
        mask_frame(9, b"p", fin=False),
        mask_frame(0, b"orphan"),
        mask_frame(10, b""),
    ]
    out = [bytes([0, 0, 0x7f]) + x for x in s]
    out.append(bytes([255, 255, 1]) + b"".join(s[:6]))
    return out


def jwt_seeds():
    h = {"alg": "HS256", "typ": "JWT"}
    good = {"sub": "alice", "exp": 2000000000, "rooms": ["lobby", "team-*"]}
    # Mode 0 never holds a token signed with the real secret (the target
    # treats an accepted one as a forgery); mode 1 signs its own.
    tokens = [
        jwt(h, good, secret=b"wrong"),
        jwt({"alg": "none"}, good).rsplit(".", 1)[0] + ".",
        jwt({"alg": "HS512"}, good),
        jwt(h, {"sub": "alice", "exp": 1}),
        "a.b.c",
        "..",
        "eyJ",
    ]
    out = [b"\x00" + t.encode() for t in tokens]
    pairs = [
        (h, good),
        ({"alg": "HS256"}, {"sub": "a", "exp": 2e9, "nbf": 1}),
        ({"alg": "HS256"}, {"sub": "a", "exp": 2e9, "nbf": 2e9}),
        ({"alg": "HS256"}, {"sub": "", "exp": 2e9}),
        ({"alg": "HS256"}, {"sub": "a", "exp": "2e9"}),
        ({"alg": "HS256"}, {"sub": "a", "exp": 2e9, "rooms": "lobby"}),
        ({"alg": "HS256"}, {"sub": "a", "exp": 2e9, "rooms": [1, 2]}),
        ({"alg": "HS256"}, {"sub": "a" * 300, "exp": 2e9}),
        ({"alg": "none"}, {"sub": "a", "exp": 2e9}),
    ]
    for hd, cl in pairs:
        out.append(b"\x01" + json.dumps(hd).encode() + b"\x00" + json.dumps(cl).encode())
    out.append(b"\x01[]\x00{}")
    # aud/iss/iat for the strict options (aud "fanout", iss "fz", 3600 s), crit,
    # and duplicate members (which json.dumps cannot write)
    now = 1700000000
    strict = [
        ({"alg": "HS256"}, {"sub": "a", "exp": now + 600, "aud": "fanout", "iss": "fz"}),
        ({"alg": "HS256"}, {"sub": "a", "iat": now, "exp": now + 600, "aud": ["x", "fanout"],
                            "iss": "fz"}),
        ({"alg": "HS256"}, {"sub": "a", "iat": now, "exp": now + 86400, "aud": "fanout",
                            "iss": "fz"}),
        ({"alg": "HS256", "crit": ["exp"]}, {"sub": "a", "exp": 2e9}),
    ]
    for hd, cl in strict:
        out.append(b"\x01" + json.dumps(hd).encode() + b"\x00" + json.dumps(cl).encode())
    out.append(b'\x01{"alg":"HS256"}\x00{"sub":"a","exp":2000000000,"sub":"b"}')
    out.append(b'\x01{"alg":"HS256","alg":"none"}\x00{"sub":"a","exp":2000000000}')
    return out


def handshake_seeds():
    early = mask_frame(1, b'{"type":"join","room":"lobby"}') + mask_frame(1, b'{"type":"ping"}')
    reqs = [
        UPGRADE.encode(),
        UPGRADE.encode() + early,
        UPGRADE.encode() + early + mask_frame(8, struct.pack(">H", 1000)),
        UPGRADE.replace("?token=%T%", "").replace("Host: x\r\n", "Host: x\r\nAuthorization: Bearer %T%\r\n").encode(),
        UPGRADE.replace("%T%", "%E%").encode(),
        UPGRADE.replace("%T%", "nope").encode(),
        # the browser options: refusal as a close frame, the app-level heartbeat
        UPGRADE.replace("%T%", "nope&auth=close").encode(),
        UPGRADE.replace("%T%", "%E%&auth=close&heartbeat=1").encode(),
        UPGRADE.replace("%T%", "%T%&heartbeat=1&auth=close").encode() + early,
        UPGRADE.replace("%T%", "%T%&heartbeat=2").encode(),
        UPGRADE.replace("Host: x\r\n", "Host: x\r\nOrigin: https://evil.example\r\n").encode(),
        UPGRADE.replace("Host: x\r\n", "Host: x\r\nOrigin: https://ok.example\r\n").encode(),
        UPGRADE.replace("Version: 13", "Version: 8").encode(),
        UPGRADE.replace("dGhlIHNhbXBsZSBub25jZQ==", "short").encode(),
        UPGRADE.replace("GET", "POST").encode(),
        UPGRADE.replace("Upgrade: websocket\r\n", "").encode(),
        b"GET /healthz HTTP/1.1\r\n\r\n",
        b"GET /readyz HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n\r\n",
        b"GET /nope HTTP/1.1\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nX: " + b"a" * 3000 + b"\r\n\r\n",
    ]
    return [bytes([0xff]) + r for r in reqs] + [bytes([3]) + reqs[1], bytes([0]) + reqs[2]]


def client_seeds():
    def op(kind, conn, payload=b""):
        return bytes([(conn << 4) | kind, len(payload)]) + payload

    def txt(conn, obj):
        return op(1, conn, json.dumps(obj).encode())

    open_all = op(0, 0) + op(0, 1) + op(0, 2) + op(0, 3)
    seeds = [
        op(0, 0) + txt(0, {"type": "join", "room": "lobby"}) + op(4, 0, b"lobby") +
        txt(0, {"type": "leave", "room": "lobby"}) + txt(0, {"type": "ping"}),
        open_all + txt(0, {"type": "join", "room": "lobby"}) +
        txt(1, {"type": "join", "room": "lobby"}) + txt(3, {"type": "join", "room": "lobby"}) +
        op(6, 1) + op(4, 0, b"lobby") * 8 + op(5, 0, b"\x00" * 200) * 4 + op(6, 1) +
        op(4, 0, b"lobby"),
        open_all + b"".join(txt(1, {"type": "join", "room": "r%d" % i}) for i in range(6)) +
        op(7, 1) + op(0, 1) + txt(1, {"type": "join", "room": "team-a"}),
        op(0, 0) + op(3, 0, b'{"type":"join","room":"team-x"}') + op(9, 0, b"hi") +
        op(8, 0, struct.pack(">H", 1000) + b"bye"),
        op(0, 2) + txt(2, {"type": "join", "room": "lobby"}) + op(10, 2, b'{"type":"nope"}') +
        op(2, 2, b"\x81\x05hello") + op(0, 2),
        op(0, 0) + op(0, 1) + txt(0, {"type": "join", "room": "lobby"}) +
        txt(1, {"type": "join", "room": "lobby"}) + op(6, 0) + op(6, 1) +
        op(4, 0, b"lobby") * 20 + op(11, 1) + op(5, 0, b"\x01" * 100),
        # a client that sends JSON pings and stops reading: its queue limit closes it (1013)
        op(0, 1) + op(6, 1) + op(13, 1, b"\xff" + b'{"type":"ping"}') * 4 +
        op(5, 0, b"\x00" * 50),
        op(0, 0, mask_frame(1, b'{"type":"join","room":"lobby"}')) + op(1, 0, b"\xff") +
        op(0, 0) + op(1, 0, b"[1,2]") + op(1, 0, b'{"type":"join","room":""}'),
    ]
    seeds += room_churn_seeds(op, txt, open_all)
    return seeds


def room_churn_seeds(op, txt, open_all):
    """Join/leave churn (security review H1, L5): the same room again and
    again, many rooms past --max-rooms-per-conn (4), members leaving from the
    middle of a room's array while broadcasts run, and connections that go
    away or are closed with rooms still joined."""
    def join(c, r):
        return txt(c, {"type": "join", "room": r})

    def leave(c, r):
        return txt(c, {"type": "leave", "room": r})

    # one frame holding join, leave, join of the same room, sent as a burst
    jl = (b'{"type":"join","room":"lobby"}')
    return [
        # join/leave/join of one room, the last member each time
        op(0, 1) + (join(1, "team-a") + leave(1, "team-a")) * 6 + join(1, "team-a") +
        op(4, 0, b"team-a") + leave(1, "team-a") + leave(1, "team-a") + join(1, "team-a"),
        # many rooms, over the limit, leave from the middle, join again
        op(0, 1) + b"".join(join(1, "r%d" % k) for k in range(8)) +
        leave(1, "r1") + join(1, "r9") + join(1, "r9") + leave(1, "r0") + leave(1, "r3") +
        b"".join(join(1, "s%d" % k) for k in range(4)) + op(4, 0, b"r2"),
        # four members of one room leaving and rejoining in turn, broadcasts between
        open_all + b"".join(join(c, "lobby") for c in (0, 1, 3)) +
        b"".join(leave(c, "lobby") + op(4, 0, b"lobby") + join(c, "lobby")
                 for c in (1, 0, 3, 1)) + op(4, 0, b"lobby"),
        # members gone with rooms joined: peer away, server close, reopen and rejoin
        open_all + join(0, "lobby") + join(1, "lobby") + join(1, "team-b") +
        join(3, "lobby") + op(7, 1) + op(4, 0, b"lobby") + op(11, 0) + op(0, 1) +
        join(1, "team-b") + op(0, 0) + join(0, "lobby") + op(7, 3) + op(4, 0, b"lobby"),
        # a burst of the same join (already a member) and of join/leave pairs
        op(0, 0) + op(13, 0, b"\x07" + jl) + op(13, 0, b"\x03" +
                                                b'{"type":"leave","room":"lobby"}') +
        op(13, 1, b"\x0f" + jl) + op(0, 1) + op(13, 1, b"\x0f" + jl),
        # join and leave glued into one frame read (raw bytes of several frames)
        op(0, 1) + op(2, 1, b"".join(mask_frame(1, m) for m in (
            b'{"type":"join","room":"x1"}', b'{"type":"leave","room":"x1"}',
            b'{"type":"join","room":"x1"}', b'{"type":"leave","room":"x1"}',
            b'{"type":"join","room":"x1"}'))) + op(4, 0, b"x1") + op(8, 1, b"\x03\xe8"),
    ]


def pos_seeds():
    """Positions (schemas/positions.md): valid ones at the limits, and near misses."""
    good = ["u.1f3a9c2e.3.12345.18c2f3a4b5e", "r.00000000.0.-1.0", "u.013aec43.7.0.1",
            "r.ffffffff.2147483647.9223372036854775807.7fffffffffffffff"]
    bad = ["u.1F3A9C2E.3.12345.18c", "u.1f3a9c2e.03.1.1", "u.1f3a9c2e.3.-2.1",
           "u.1f3a9c2e.2147483648.1.1", "u.1f3a9c2e.3.1.8000000000000000",
           "u.1f3a9c2e.3.1.1\x00", " u.1f3a9c2e.3.1.1", "u.1f3a9c2e.3.1.1.1"]
    return [x.encode() for x in good + bad]


def write(target, seeds):
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for s in seeds:
        name = hashlib.sha1(s).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(s)


def main():
    env = envelope_vectors()
    write("fuzz_envelope", env)
    write("fuzz_env_frame", env)
    write("fuzz_http", http_seeds())
    write("fuzz_ws_frames", ws_seeds())
    write("fuzz_jwt", jwt_seeds())
    write("fuzz_handshake", handshake_seeds())
    write("fuzz_client", client_seeds())
    write("fuzz_pos", pos_seeds())


if __name__ == "__main__":
    main()
