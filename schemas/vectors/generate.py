#!/usr/bin/env python3
"""Writes the test vectors in this folder from an independent, pure-Python
implementation of the contracts (XXH32 and the msgpack envelope), so the C code
(tests/unit/common/*_test.c loads these files) and the documents cannot drift.
Run it only when a contract changes: `python3 schemas/vectors/generate.py`."""

import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- XXH32 (https://github.com/Cyan4973/xxHash/blob/dev/doc/xxhash_spec.md) ----
P1, P2, P3, P4, P5 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D, 0x27D4EB2F, 0x165667B1
M = 0xFFFFFFFF


def rotl(x, r):
    return ((x << r) | (x >> (32 - r))) & M


def xxh32(data, seed=0):
    n = len(data)
    i = 0
    if n >= 16:
        v = [(seed + P1 + P2) & M, (seed + P2) & M, seed & M, (seed - P1) & M]
        while i + 16 <= n:
            for k in range(4):
                lane = struct.unpack_from("<I", data, i + 4 * k)[0]
                v[k] = (rotl((v[k] + lane * P2) & M, 13) * P1) & M
            i += 16
        acc = (rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18)) & M
    else:
        acc = (seed + P5) & M
    acc = (acc + n) & M
    while i + 4 <= n:
        lane = struct.unpack_from("<I", data, i)[0]
        acc = (rotl((acc + lane * P3) & M, 17) * P4) & M
        i += 4
    while i < n:
        acc = (rotl((acc + data[i] * P5) & M, 11) * P1) & M
        i += 1
    acc ^= acc >> 15
    acc = (acc * P2) & M
    acc ^= acc >> 13
    acc = (acc * P3) & M
    acc ^= acc >> 16
    return acc


def partition(h, p):
    return (h * p) >> 32


# ---- msgpack, just the subset the envelope uses ----
def mp_str(s):
    b = s.encode() if isinstance(s, str) else s
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 256:
        return bytes([0xD9, n]) + b
    return b"\xda" + struct.pack(">H", n) + b


def mp_bin(b):
    n = len(b)
    if n < 256:
        return bytes([0xC4, n]) + b
    return b"\xc5" + struct.pack(">H", n) + b


def mp_uint(v):
    if v < 128:
        return bytes([v])
    if v < 256:
        return bytes([0xCC, v])
    if v < 65536:
        return b"\xcd" + struct.pack(">H", v)
    if v < 2**32:
        return b"\xce" + struct.pack(">I", v)
    return b"\xcf" + struct.pack(">Q", v)


def mp_int64(v):
    return b"\xd3" + struct.pack(">q", v)  # msgpack-c packs int64 compactly; see below


def mp_int_compact(v):
    """What msgpack-c's msgpack_pack_int64 emits: the smallest form."""
    if v >= 0:
        return mp_uint(v)
    if v >= -32:
        return struct.pack("b", v)
    if v >= -128:
        return b"\xd0" + struct.pack(">b", v)
    if v >= -32768:
        return b"\xd1" + struct.pack(">h", v)
    if v >= -(2**31):
        return b"\xd2" + struct.pack(">i", v)
    return b"\xd3" + struct.pack(">q", v)


def mp_map(pairs):
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(k + v for k, v in pairs)


ID = bytes.fromhex("0190b3a1c2d37abc8def0123456789ab")


def envelope(kind, target, payload, ct="application/json", ts=1700000000000, v=1, extra=()):
    pairs = [(mp_str("v"), mp_uint(v)), (mp_str("id"), mp_bin(ID)), (mp_str("k"), mp_str(kind)),
             (mp_str("t"), mp_str(target)), (mp_str("p"), mp_bin(payload))]
    if ct is not None:
        pairs.append((mp_str("ct"), mp_str(ct)))
    pairs.append((mp_str("ts"), mp_int_compact(ts)))
    pairs.extend(extra)
    return mp_map(pairs)


def main():
    users = ["", "a", "alice", "bob", "user-1", "user-42", "user-1000", "Ünïcødé",
             "room:lobby", "a-much-longer-user-identifier-with-more-than-16-bytes",
             "0123456789abcdef", "x" * 100]
    ps = [1, 2, 3, 4, 8, 12, 16, 64, 100, 1024]
    with open(os.path.join(HERE, "partition.tsv"), "w") as f:
        f.write("# key (JSON string)\thash32 (hex)\t" + "\t".join("P=%d" % p for p in ps) + "\n")
        for u in users:
            h = xxh32(u.encode())
            f.write("%s\t%08x\t%s\n" % (json.dumps(u), h,
                                          "\t".join(str(partition(h, p)) for p in ps)))

    id_text = "0190b3a1-c2d3-7abc-8def-0123456789ab"
    valid = [
        ("send-json", envelope("send", "alice", b'{"hello":"world"}'),
         {"kind": "send", "target": "alice", "payload": '{"hello":"world"}',
          "ct": "application/json", "ts": 1700000000000}),
        ("broadcast", envelope("broadcast", "lobby", b"[1,2,3]"),
         {"kind": "broadcast", "target": "lobby", "payload": "[1,2,3]",
          "ct": "application/json", "ts": 1700000000000}),
        ("no-content-type-defaults-to-json",
         envelope("send", "bob", b"42", ct=None), {"kind": "send", "target": "bob", "payload": "42",
                                                   "ct": "application/json",
                                                   "ts": 1700000000000}),
        ("unknown-fields-skipped",
         envelope("send", "bob", b"1", extra=[(mp_str("future"), mp_map([(mp_str("x"), mp_uint(1))])),
                                               (mp_str("z"), b"\x92\x01\xc0")]),
         {"kind": "send", "target": "bob", "payload": "1", "ct": "application/json",
          "ts": 1700000000000}),
        ("binary-payload", envelope("send", "carol", b"\x00\xff\x10", ct="application/octet-stream",
                                    ts=-5),
         {"kind": "send", "target": "carol", "payload_hex": "00ff10",
          "ct": "application/octet-stream", "ts": -5}),
    ]
    good = valid[0][1]
    invalid = [
        ("empty", b"", "EPROTO", "empty"),
        ("not-a-map", b"\x93\x01\x02\x03", "EPROTO", "must be a msgpack map"),
        ("truncated-map", good[:len(good) // 2], "EPROTO", "truncated"),
        ("truncated-header", b"\x87\xa1", "EPROTO", "truncated"),
        ("huge-declared-str", b"\x81\xa1t\xdb\xff\xff\xff\xff", "EPROTO", "truncated"),
        ("huge-declared-map", b"\xdf\xff\xff\xff\xff\xa1v\x01", "EPROTO", "truncated"),
        ("huge-declared-array-unknown-field", b"\x81\xa1x\xdd\xff\xff\xff\xff\x01", "EPROTO",
         "truncated"),
        ("wrong-type-target", envelope("send", "a", b"1")[:0] + mp_map([
            (mp_str("v"), mp_uint(1)), (mp_str("id"), mp_bin(ID)), (mp_str("k"), mp_str("send")),
            (mp_str("t"), mp_uint(7)), (mp_str("p"), mp_bin(b"1"))]), "EPROTO", "field \"t\""),
        ("wrong-type-version", mp_map([(mp_str("v"), mp_str("1"))]), "EPROTO", "field \"v\""),
        ("missing-payload", mp_map([
            (mp_str("v"), mp_uint(1)), (mp_str("id"), mp_bin(ID)), (mp_str("k"), mp_str("send")),
            (mp_str("t"), mp_str("a"))]), "EPROTO", "missing field \"p\""),
        ("short-id", mp_map([(mp_str("id"), mp_bin(b"\x01\x02"))]), "EPROTO", "16 bytes"),
        ("unknown-kind", mp_map([(mp_str("k"), mp_str("shout"))]), "EPROTO", "unknown kind"),
        ("newer-major-version", envelope("send", "a", b"1", v=2), "ENOTSUP", "newer"),
        ("trailing-bytes", good + b"\x00", "EPROTO", "trailing"),
        ("duplicate-field", mp_map([(mp_str("v"), mp_uint(1)), (mp_str("v"), mp_uint(1))]),
         "EPROTO", "duplicate"),
        ("bad-type-byte", b"\xc1", "EPROTO", "invalid msgpack type"),
        ("deep-nesting", b"\x81\xa1x" + b"\x91" * 100 + b"\xc0", "EPROTO", "nesting"),
        ("empty-target", mp_map([(mp_str("t"), mp_str(""))]), "EPROTO", "field \"t\""),
        ("json-not-msgpack", b'{"user":"a"}', "EPROTO", "must be a msgpack map"),
    ]
    with open(os.path.join(HERE, "envelope.tsv"), "w") as f:
        f.write("# valid\tname\thex\tfields (JSON); id is always %s\n" % id_text)
        f.write("# invalid\tname\thex\terror code\tsubstring of the error message\n")
        for name, b, fields in valid:
            f.write("valid\t%s\t%s\t%s\n" % (name, b.hex(), json.dumps(fields, sort_keys=True)))
        for name, b, code, sub in invalid:
            f.write("invalid\t%s\t%s\t%s\t%s\n" % (name, b.hex(), code, sub))


if __name__ == "__main__":
    main()
