#!/usr/bin/env python3
"""An IPFIX tap and decoder for flowlog's export tests, written from RFC 7011 and
the IANA IPFIX registry, independently of flowlog's encoder (Python standard
library only).

  ipfix_tap.py udp PORT OUT              store every datagram received on 127.0.0.1:PORT
  ipfix_tap.py tcp PORT OUT [FWD_PORT]   an IPFIX-over-TCP collector on 127.0.0.1:PORT:
                                         store every message, and forward each as one UDP
                                         datagram to 127.0.0.1:FWD_PORT (nfcapd, which
                                         listens on UDP only)
  ipfix_tap.py decode OUT                print the stored messages, decoded, as JSON

OUT holds whole messages back to back (each starts with its own length); a message
cut by a closed connection is not stored.
"""
import json
import socket
import struct
import sys
import threading

# (enterprise, element id) -> (name, type)
IANA = {
    1: ("octetDeltaCount", "u"), 2: ("packetDeltaCount", "u"), 4: ("protocolIdentifier", "u"),
    6: ("tcpControlBits", "u"), 7: ("sourceTransportPort", "u"), 8: ("sourceIPv4Address", "ip4"),
    10: ("ingressInterface", "u"), 11: ("destinationTransportPort", "u"),
    12: ("destinationIPv4Address", "ip4"), 14: ("egressInterface", "u"),
    27: ("sourceIPv6Address", "ip6"), 28: ("destinationIPv6Address", "ip6"),
    60: ("ipVersion", "u"), 61: ("flowDirection", "u"), 82: ("interfaceName", "s"),
    89: ("forwardingStatus", "u"), 144: ("exportingProcessId", "u"),
    150: ("flowStartSeconds", "u"), 151: ("flowEndSeconds", "u"),
    152: ("flowStartMilliseconds", "u"), 153: ("flowEndMilliseconds", "u"),
    166: ("notSentFlowTotalCount", "u"), 167: ("notSentPacketTotalCount", "u"),
    168: ("notSentOctetTotalCount", "u"),
}
# flowlog's enterprise elements (README, "IPFIX elements").
FLOWLOG = {
    1: ("traffic_path", "u"), 2: ("log-status", "s"), 3: ("eni-id", "s"), 4: ("vm-id", "s"),
    5: ("vswitch-id", "s"), 6: ("vpc-id", "s"), 7: ("account-id", "s"), 8: ("record-id", "u"),
}


def store(out, lock, msg):
    with lock:
        out.write(msg)
        out.flush()


def udp(port, path):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.bind(("127.0.0.1", port))
    lock = threading.Lock()
    with open(path, "ab") as out:
        print("ready", flush=True)
        while True:
            msg = s.recv(65535)
            store(out, lock, msg)


def tcp(port, path, fwd):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", port))
    ls.listen(8)
    lock = threading.Lock()
    out = open(path, "ab")
    fs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM) if fwd else None

    def serve(c):
        buf = b""
        while True:
            data = c.recv(65536)
            if not data:
                return
            buf += data
            while len(buf) >= 4:
                (version, length) = struct.unpack("!HH", buf[:4])
                if version != 10 or length < 16:
                    raise SystemExit(f"not an IPFIX message header: {buf[:16].hex()}")
                if len(buf) < length:
                    break
                msg, buf = buf[:length], buf[length:]
                store(out, lock, msg)
                if fs:
                    fs.sendto(msg, ("127.0.0.1", fwd))

    print("ready", flush=True)
    while True:
        c, _ = ls.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def value(kind, b):
    if kind == "u":
        return int.from_bytes(b, "big")
    if kind == "ip4":
        return socket.inet_ntop(socket.AF_INET, b)
    if kind == "ip6":
        return socket.inet_ntop(socket.AF_INET6, b)
    return b.decode("utf-8")


def decode(path):
    data = open(path, "rb").read()
    templates = {}  # (domain, id) -> (scope count, [(ent, id, len)])
    messages = []
    at = 0
    while at < len(data):
        version, length, export, seq, domain = struct.unpack("!HHIII", data[at:at + 16])
        assert version == 10, f"version {version} at {at}"
        msg = data[at:at + length]
        assert len(msg) == length, "cut message"
        at += length
        m = {"length": length, "sequence": seq, "domain": domain, "export_time": export,
             "templates": [], "records": []}
        pos = 16
        while pos < length:
            set_id, set_len = struct.unpack("!HH", msg[pos:pos + 4])
            assert set_len >= 4 and pos + set_len <= length, "bad set length"
            body = msg[pos + 4:pos + set_len]
            pos += set_len
            if set_id in (2, 3):
                b = 0
                while len(body) - b >= 4:
                    tid, count = struct.unpack("!HH", body[b:b + 4])
                    b += 4
                    scope = 0
                    if set_id == 3:
                        (scope,) = struct.unpack("!H", body[b:b + 2])
                        b += 2
                    fields = []
                    for _ in range(count):
                        eid, flen = struct.unpack("!HH", body[b:b + 4])
                        b += 4
                        ent = 0
                        if eid & 0x8000:
                            eid &= 0x7FFF
                            (ent,) = struct.unpack("!I", body[b:b + 4])
                            b += 4
                        fields.append((ent, eid, flen))
                    templates[(domain, tid)] = (scope, fields)
                    m["templates"].append({"id": tid, "options": set_id == 3,
                                           "scope_fields": scope,
                                           "fields": [list(f) for f in fields]})
                continue
            assert set_id >= 256, f"reserved set id {set_id}"
            scope, fields = templates[(domain, set_id)]
            b = 0
            while b < len(body):
                rec = {"template": set_id}
                for (ent, eid, flen) in fields:
                    if flen == 0xFFFF:
                        n = body[b]
                        b += 1
                        if n == 255:
                            (n,) = struct.unpack("!H", body[b:b + 2])
                            b += 2
                        flen = n
                    raw = body[b:b + flen]
                    assert len(raw) == flen, "record runs past its set"
                    b += flen
                    table = IANA if ent == 0 else FLOWLOG
                    name, kind = table.get(eid, (f"{ent}/{eid}", "hex"))
                    if ent not in (0,) and ent != ENTERPRISE:
                        name, kind = f"{ent}/{eid}", "hex"
                    rec[name] = raw.hex() if kind == "hex" else value(kind, raw)
                m["records"].append(rec)
        messages.append(m)
    json.dump(messages, sys.stdout)


ENTERPRISE = 32473

if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "udp":
        udp(int(sys.argv[2]), sys.argv[3])
    elif mode == "tcp":
        tcp(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
    elif mode == "decode":
        decode(sys.argv[2])
    else:
        raise SystemExit(__doc__)
