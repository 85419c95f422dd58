#!/usr/bin/env python3
"""Writes the test vectors in this folder with implementations of the
contracts that are independent of the project's code (XXH32 from Debian's
python3-xxhash, msgpack from python3-msgpack), so the C code
(tests/unit/common/*_test.c loads these files) and the documents cannot drift.
Run it only when a contract changes: `/usr/bin/python3 schemas/vectors/generate.py`
(deploy/install-deps.sh installs both modules)."""

import json
import os

import msgpack  # Debian's python3-msgpack
import xxhash  # Debian's python3-xxhash

HERE = os.path.dirname(os.path.abspath(__file__))


def xxh32(data, seed=0):
    return xxhash.xxh32_intdigest(data, seed=seed)


def partition(h, p):
    return (h * p) >> 32


def jump(key, n):
    """Jump consistent hash (Lamping & Veach 2014), in doubles as the paper."""
    b, j = -1, 0
    while j < n:
        b = j
        key = (key * 2862933555777941757 + 1) & 0xFFFFFFFFFFFFFFFF
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def mp(obj):
    """msgpack of obj: str as str, bytes as bin, every int in its smallest
    form (as msgpack-c's msgpack_pack_int64 writes it)."""
    return msgpack.packb(obj, use_bin_type=True)


def mp_str(s):
    return mp(s)


def mp_bin(b):
    return mp(bytes(b))


def mp_uint(v):
    return mp(v)


def mp_int_compact(v):
    return mp(v)


def mp_map(pairs):
    """A map from (key, value) pairs already encoded: kept in this order,
    duplicates too (a dict could not hold those)."""
    p = msgpack.Packer(use_bin_type=True)
    return p.pack_map_header(len(pairs)) + b"".join(k + v for k, v in pairs)


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

    # schemas/redis-shards.md: node = jump(hash32(name), N)
    ns = [1, 2, 3, 4, 5, 8, 16, 64]
    names = users + ["delivery-0", "delivery-1", "host-a-4711", "lobby", "room-7"]
    with open(os.path.join(HERE, "redis-shards.tsv"), "w") as f:
        f.write("# name (JSON string)\thash32 (hex)\t" + "\t".join("N=%d" % n for n in ns) + "\n")
        for u in names:
            h = xxh32(u.encode())
            f.write("%s\t%08x\t%s\n" % (json.dumps(u), h, "\t".join(str(jump(h, n)) for n in ns)))

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
                                               (mp_str("z"), mp([1, None]))]),
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
