"""What the conformance checks share: the registry of checks (by MQTT 5.0 statement id)
and `Env`, the server, the two things and topics and client ids of a check's own."""
import threading
import time

import mqtt5 as m

CHECKS = []


def check(*ids):
    """Registers a check for the statement ids it verifies (MQTT 5.0 numbering)."""
    def wrap(fn):
        CHECKS.append((ids, fn))
        return fn
    return wrap


class Env:
    """What a check needs: the server, the two things, and topics of its own."""

    def __init__(self, host, port, tenant, channel, a, b):
        self.addr = (host, int(port))
        self.tenant, self.channel = tenant, channel
        self.users = {"a": a, "b": b}
        self.run = "r%x" % (int(time.time() * 1000) % 0xFFFFFF)
        self.conns = []
        self.lock = threading.Lock()

    def topic(self, *parts, channel=None):
        return "/".join(["m", self.tenant, "c", channel or self.channel, self.run, *parts])

    def locked(self, *parts):
        return self.topic(*parts, channel="locked")

    def cid(self, name):
        return "%s-%s" % (self.run, name)

    def open(self):
        c = m.Conn(self.addr)
        with self.lock:
            self.conns.append(c)
        return c

    def connect(self, name, who="a", clean=True, props=None, will=None, keep_alive=60,
                key=None, ok=True):
        """Connects thing `who` with client id `name`; (connection, CONNACK)."""
        user, real_key = self.users[who]
        c = self.open()
        c.send(m.connect(self.cid(name) if name else "", user, key or real_key, clean,
                         keep_alive, props, will))
        ack = c.expect(m.CONNACK)
        if ok:
            assert ack.reason == 0, "CONNACK %#x" % ack.reason
        return c, ack

    def subscribe(self, c, filters, pid=1, props=None):
        """SUBSCRIBE [(filter, options)] and its SUBACK's codes."""
        c.send(m.subscribe(pid, filters, props))
        ack = c.expect(m.SUBACK)
        assert ack.pid == pid, "SUBACK packet id %s, sent %s" % (ack.pid, pid)
        return ack.codes

    def publish(self, c, topic, payload, qos=1, pid=1, retain=False, props=None):
        """Publishes and completes the flow of its QoS; the PUBACK or PUBREC."""
        c.send(m.publish(topic, payload, qos, pid if qos else None, retain, props=props))
        if qos == 1:
            return c.expect(m.PUBACK)
        if qos == 2:
            rec = c.expect(m.PUBREC)
            c.send(m.ack(m.PUBREL, pid))
            c.expect(m.PUBCOMP)
            return rec
        return None

    def until(self, c, payload, timeout=10.0, ack=True):
        """PUBLISH packets received up to and including the one with `payload`, acking
        QoS 1 and 2 deliveries when `ack`."""
        deadline = time.monotonic() + timeout
        got = []
        while True:
            p = c.recv(max(0.0, deadline - time.monotonic()))
            if p is None:
                raise AssertionError("no message %r within %ss; got %r" % (payload, timeout, got))
            if p.kind == m.PUBREL and ack:
                c.send(m.ack(m.PUBCOMP, p.pid))
            if p.kind != m.PUBLISH:
                continue
            got.append(p)
            if ack and p.qos == 1:
                c.send(m.ack(m.PUBACK, p.pid))
            elif ack and p.qos == 2:
                c.send(m.ack(m.PUBREC, p.pid))
            if p.payload == (payload.encode() if isinstance(payload, str) else payload):
                return got

    def until_pub(self, sub, pub, topic, payload):
        """Publishes `payload` on `topic` (QoS 1) and returns what `sub` got up to it."""
        self.publish(pub, topic, payload, qos=1, pid=998)
        return self.until(sub, payload)

    def marker(self, sub, pub, topic, name="marker", ack=True):
        """Publishes a marker (QoS 1) after what a check sent and returns every message
        `sub` received before it: per-publisher order makes absence before it certain."""
        self.publish(pub, topic, name, qos=1, pid=999)
        return self.until(sub, name, ack=ack)[:-1]

    def close_all(self):
        for c in self.conns:
            c.close()

