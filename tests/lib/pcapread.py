"""Reads a classic pcap file (what `tcpdump -w` writes) of TCP traffic and
yields every segment that carries data, with its capture time.

Benchmarks use it to time one message's steps from packets: every process
on loopback, one clock, microsecond stamps taken by the kernel when the
segment is sent, independent of the programs being measured.

  for ts_us, sport, dport, payload in tcp_segments(path): ...

Link types: Ethernet (what `-i lo` gives), Linux cooked v1 and v2 (`-i any`),
raw IP. IPv4 and IPv6; other protocols are skipped."""

import struct

_MAGIC = {
    0xA1B2C3D4: ("<", False), 0xD4C3B2A1: (">", False),   # microseconds
    0xA1B23C4D: ("<", True), 0x4D3CB2A1: (">", True),     # nanoseconds
}
# link type -> bytes before the IP header
_LINK_HEADER = {1: 14, 113: 16, 276: 20, 101: 0, 228: 0, 229: 0}


def tcp_segments(path):
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            return
        magic = struct.unpack("<I", head[:4])[0]
        if magic not in _MAGIC:
            raise ValueError("%s: not a classic pcap file (pcapng?)" % path)
        endian, nanos = _MAGIC[magic]
        link = struct.unpack(endian + "I", head[20:24])[0] & 0x0FFFFFFF
        if link not in _LINK_HEADER:
            raise ValueError("%s: link type %d not handled" % (path, link))
        skip = _LINK_HEADER[link]
        rec = struct.Struct(endian + "IIII")
        while True:
            ph = f.read(16)
            if len(ph) < 16:
                return
            sec, frac, incl, _orig = rec.unpack(ph)
            data = f.read(incl)
            if len(data) < incl:
                return  # a capture cut off mid-record
            ts_us = sec * 1000000 + (frac // 1000 if nanos else frac)
            ip = memoryview(data)[skip:]
            if len(ip) < 20:
                continue
            version = ip[0] >> 4
            if version == 4:
                ihl = (ip[0] & 15) * 4
                if ip[9] != 6:
                    continue
                total = struct.unpack("!H", ip[2:4])[0]
                # A segmentation-offload packet may say 0; the capture is the bound.
                l4 = ip[ihl:total] if total >= ihl else ip[ihl:]
            elif version == 6:
                if ip[6] != 6:
                    continue
                l4 = ip[40:]
            else:
                continue
            if len(l4) < 20:
                continue
            sport, dport = struct.unpack("!HH", l4[:4])
            payload = l4[(l4[12] >> 4) * 4:]
            if len(payload) > 0:
                yield ts_us, sport, dport, bytes(payload)
