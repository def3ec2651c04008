"""A raw MQTT 5 client for the conformance suite: it writes exactly the packets a check asks
for (malformed ones included) and reads what the server answers, packet by packet.

Standard library only. Properties are kept as an ordered list of (id, value) pairs, so a
check can see their order and repetitions (user properties, subscription identifiers).
"""
import socket
import struct
import time

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15)
NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
         7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
         12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}

# Property identifiers (MQTT 5, 2.2.2.2) and how each value is encoded.
PAYLOAD_FORMAT, MESSAGE_EXPIRY, CONTENT_TYPE, RESPONSE_TOPIC, CORRELATION_DATA = 1, 2, 3, 8, 9
SUBSCRIPTION_ID, SESSION_EXPIRY, ASSIGNED_CLIENT_ID, SERVER_KEEP_ALIVE = 11, 17, 18, 19
AUTH_METHOD, AUTH_DATA, REQUEST_PROBLEM_INFO, WILL_DELAY = 21, 22, 23, 24
REQUEST_RESPONSE_INFO, RESPONSE_INFO, SERVER_REFERENCE, REASON_STRING = 25, 26, 28, 31
RECEIVE_MAXIMUM, TOPIC_ALIAS_MAXIMUM, TOPIC_ALIAS, MAXIMUM_QOS, RETAIN_AVAILABLE = 33, 34, 35, 36, 37
USER_PROPERTY, MAXIMUM_PACKET_SIZE = 38, 39
WILDCARD_SUB_AVAILABLE, SUB_ID_AVAILABLE, SHARED_SUB_AVAILABLE = 40, 41, 42
KINDS = {1: "byte", 2: "u32", 3: "str", 8: "str", 9: "bin", 11: "varint", 17: "u32", 18: "str",
         19: "u16", 21: "str", 22: "bin", 23: "byte", 24: "u32", 25: "byte", 26: "str",
         28: "str", 31: "str", 33: "u16", 34: "u16", 35: "u16", 36: "byte", 37: "byte",
         38: "pair", 39: "u32", 40: "byte", 41: "byte", 42: "byte"}


class Closed(Exception):
    """The server closed the connection (EOF or reset)."""


def varint(n):
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def string(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(b)) + b


def properties(props):
    body = bytearray()
    for pid, value in props or []:
        body += varint(pid)
        kind = KINDS[pid]
        if kind == "byte":
            body.append(value)
        elif kind == "u16":
            body += struct.pack(">H", value)
        elif kind == "u32":
            body += struct.pack(">I", value)
        elif kind == "varint":
            body += varint(value)
        elif kind in ("str", "bin"):
            body += string(value)
        else:
            body += string(value[0]) + string(value[1])
    return varint(len(body)) + bytes(body)


def packet(kind, flags, body):
    return bytes([kind << 4 | flags]) + varint(len(body)) + body


def connect(client_id, user=None, password=None, clean=True, keep_alive=60, props=None,
            will=None, version=5, name=b"MQTT", reserved=False):
    """A CONNECT; `will` is a dict: topic, payload, qos, retain, props."""
    flags = (0x02 if clean else 0) | (0x01 if reserved else 0)
    if will:
        flags |= 0x04 | will.get("qos", 0) << 3 | (0x20 if will.get("retain") else 0)
    if user is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = string(name) + bytes([version, flags]) + struct.pack(">H", keep_alive)
    body += properties(props) + string(client_id)
    if will:
        body += properties(will.get("props")) + string(will["topic"]) + string(will["payload"])
    if user is not None:
        body += string(user)
    if password is not None:
        body += string(password)
    return packet(CONNECT, 0, body)


def publish(topic, payload=b"", qos=0, pid=None, retain=False, dup=False, props=None):
    flags = (0x08 if dup else 0) | qos << 1 | (0x01 if retain else 0)
    body = string(topic)
    if qos:
        body += struct.pack(">H", pid)
    body += properties(props) + (payload.encode() if isinstance(payload, str) else payload)
    return packet(PUBLISH, flags, body)


def ack(kind, pid, reason=0, props=None, flags=None):
    """PUBACK, PUBREC, PUBREL or PUBCOMP."""
    if flags is None:
        flags = 2 if kind == PUBREL else 0
    body = struct.pack(">H", pid)
    if reason or props:
        body += bytes([reason]) + properties(props)
    return packet(kind, flags, body)


def subscribe(pid, filters, props=None, flags=2):
    """`filters`: [(filter, options byte)]; options = qos | nl<<2 | rap<<3 | rh<<4."""
    body = struct.pack(">H", pid) + properties(props)
    for f, opts in filters:
        body += string(f) + bytes([opts])
    return packet(SUBSCRIBE, flags, body)


def opts(qos=0, nl=0, rap=0, rh=0):
    return qos | nl << 2 | rap << 3 | rh << 4


def unsubscribe(pid, filters, flags=2):
    body = struct.pack(">H", pid) + properties(None)
    for f in filters:
        body += string(f)
    return packet(UNSUBSCRIBE, flags, body)


def pingreq():
    return packet(PINGREQ, 0, b"")


def disconnect(reason=0, props=None, flags=0):
    return packet(DISCONNECT, flags, bytes([reason]) + properties(props))


class Packet:
    """A decoded packet: `kind`, `flags` and the fields its kind has."""

    def __init__(self, kind, flags):
        self.kind, self.flags = kind, flags
        self.props, self.reason, self.pid, self.codes = [], 0, None, []

    def prop(self, pid, default=None):
        return next((v for k, v in self.props if k == pid), default)

    def all(self, pid):
        return [v for k, v in self.props if k == pid]

    def __repr__(self):
        fields = {k: v for k, v in vars(self).items() if v not in (None, [], b"")}
        fields["kind"] = NAMES.get(self.kind, self.kind)
        return "Packet(%s)" % fields


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, n):
        if self.at + n > len(self.data):
            raise ValueError("packet shorter than its fields")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def byte(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def varint(self):
        n, mult = 0, 1
        while True:
            b = self.byte()
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                return n

    def bin(self):
        return self.take(self.u16())

    def props(self):
        end = self.varint() + self.at
        out = []
        while self.at < end:
            pid = self.varint()
            kind = KINDS[pid]
            value = {"byte": self.byte, "u16": self.u16, "u32": self.u32,
                     "varint": self.varint, "bin": self.bin}.get(kind)
            if value:
                out.append((pid, value()))
            elif kind == "str":
                out.append((pid, self.bin().decode()))
            else:
                out.append((pid, (self.bin().decode(), self.bin().decode())))
        return out

    def left(self):
        return len(self.data) - self.at


def decode(kind, flags, body):
    p, r = Packet(kind, flags), Reader(body)
    if kind == CONNACK:
        p.session_present = r.byte() & 1
        p.ack_flags = body[0]
        p.reason = r.byte()
        p.props = r.props() if r.left() else []
    elif kind == PUBLISH:
        p.qos, p.dup, p.retain = flags >> 1 & 3, bool(flags & 8), bool(flags & 1)
        p.topic = r.bin().decode()
        p.pid = r.u16() if p.qos else None
        p.props = r.props()
        p.payload = bytes(r.take(r.left()))
    elif kind in (PUBACK, PUBREC, PUBREL, PUBCOMP):
        p.pid = r.u16()
        p.reason = r.byte() if r.left() else 0
        p.props = r.props() if r.left() else []
    elif kind in (SUBACK, UNSUBACK):
        p.pid = r.u16()
        p.props = r.props()
        p.codes = list(r.take(r.left()))
    elif kind in (DISCONNECT, AUTH):
        p.reason = r.byte() if r.left() else 0
        p.props = r.props() if r.left() else []
    return p


class Conn:
    """One TCP connection to the server; packets sent raw, answers decoded."""

    def __init__(self, addr, timeout=10.0):
        self.sock = socket.create_connection(addr, timeout=timeout)
        self.buf = b""
        self.closed = False

    def send(self, data):
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise Closed(str(e))

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        self.sock.settimeout(left)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError
        except OSError as e:
            self.closed = True
            raise Closed(str(e))
        if not chunk:
            self.closed = True
            raise Closed("EOF")
        self.buf += chunk

    def recv(self, timeout=10.0):
        """The next packet; None when none came within `timeout`; Closed at EOF."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if len(self.buf) >= 2:
                    length, mult, i = 0, 1, 1
                    while i < len(self.buf) and i <= 4:
                        b = self.buf[i]
                        length += (b & 0x7F) * mult
                        mult *= 128
                        i += 1
                        if not b & 0x80:
                            break
                    else:
                        self._fill(deadline)
                        continue
                    if len(self.buf) >= i + length:
                        head, body = self.buf[0], self.buf[i:i + length]
                        self.buf = self.buf[i + length:]
                        return decode(head >> 4, head & 0x0F, body)
                self._fill(deadline)
        except TimeoutError:
            return None

    def expect(self, kind, timeout=10.0, skip=()):
        """The next packet of `kind`, skipping kinds in `skip`; raises otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            p = self.recv(max(0.0, deadline - time.monotonic()))
            if p is None:
                raise AssertionError("no %s within %ss" % (NAMES[kind], timeout))
            if p.kind == kind:
                return p
            if p.kind not in skip:
                raise AssertionError("expected %s, got %r" % (NAMES[kind], p))

    def until_closed(self, timeout=10.0):
        """Packets the server sent until it closed the connection; raises if it stayed open."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            try:
                p = self.recv(max(0.0, deadline - time.monotonic()))
            except Closed:
                return got
            if p is None:
                raise AssertionError("connection still open after %ss (got %r)" % (timeout, got))
            got.append(p)

    def quiet(self, window):
        """Packets that arrive within `window` seconds (the connection may stay open)."""
        deadline = time.monotonic() + window
        got = []
        while True:
            p = self.recv(max(0.0, deadline - time.monotonic()))
            if p is None:
                return got
            got.append(p)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
