"""Checks of MQTT 5 §3.3–§3.7 (PUBLISH and its acknowledgements) and §4.3–§4.6, §4.9 (QoS
flows, resending, ordering, flow control): retained messages, properties passed through,
topic aliases, message expiry, packet ids and DUP."""
import time

import mqtt5 as m
from harness import check

PUBACK_CODES = {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99}


def pair(e, name, qos=1, rap=0, props=None, filt=None):
    """A subscriber (thing b) on `<name>/#` at `qos`, a publisher (thing a), and a topic."""
    sub, _ = e.connect(name + "-sub", "b", props=props)
    assert e.subscribe(sub, [(filt or e.topic(name, "#"), m.opts(qos, rap=rap))]) == [qos]
    pub, _ = e.connect(name + "-pub")
    return sub, pub, e.topic(name, "t")


def retained_for(e, name, topic, rh=0):
    """The retained messages a new subscriber to `topic` is sent (up to a live marker)."""
    sub, _ = e.connect(name, "b")
    assert e.subscribe(sub, [(topic, m.opts(1, rh=rh))]) == [1]
    pub, _ = e.connect(name + "-mk")
    return e.marker(sub, pub, topic)


@check("MQTT-3.3.1-1", "MQTT-4.4.0-1")
def unacknowledged_deliveries_are_resent_with_dup(e):
    t = e.topic("dup", "x")
    sub, _ = e.connect("dup", "b", props=[(m.SESSION_EXPIRY, 60)])
    assert e.subscribe(sub, [(t, m.opts(1))]) == [1]
    pub, _ = e.connect("dup-pub")
    e.publish(pub, t, "again")
    first = sub.expect(m.PUBLISH)
    assert not first.dup
    sub.close()
    again, ack = e.connect("dup", "b", clean=False, props=[(m.SESSION_EXPIRY, 60)])
    assert ack.session_present == 1
    p = again.expect(m.PUBLISH)
    assert p.dup and p.pid == first.pid and p.payload == b"again", (first, p)


@check("MQTT-3.3.1-2", "MQTT-4.3.1-1")
def qos_0_deliveries_have_dup_0(e):
    sub, pub, t = pair(e, "dup0", qos=0)
    pub.send(m.publish(t, "zero", 0))
    p = sub.expect(m.PUBLISH)
    assert p.qos == 0 and not p.dup and p.pid is None, p


@check("MQTT-3.3.1-3", "MQTT-4.3.2-2")
def outgoing_dup_is_set_independently(e):
    sub, pub, t = pair(e, "dupin")
    pub.send(m.publish(t, "dupin", 1, 7, dup=True))
    pub.expect(m.PUBACK)
    p = sub.expect(m.PUBLISH)
    assert p.qos == 1 and not p.dup, p


@check("MQTT-3.3.1-4")
def qos_3_is_malformed(e):
    c, _ = e.connect("qos3")
    c.send(m.packet(m.PUBLISH, 6, m.string(e.topic("x")) + b"\x00\x01\x00"))
    got = c.until_closed()
    assert all(p.kind == m.DISCONNECT and p.reason >= 0x80 for p in got), got


@check("MQTT-3.3.1-5")
def a_retained_message_replaces_the_last(e):
    c, _ = e.connect("replace")
    t = e.topic("replace", "x")
    e.publish(c, t, "first", retain=True)
    e.publish(c, t, "second", retain=True, pid=2)
    got = retained_for(e, "replace-sub", t)
    assert [(p.payload, p.retain) for p in got] == [(b"second", True)], got


@check("MQTT-3.3.1-6")
def an_empty_retained_payload_clears(e):
    sub, pub, t = pair(e, "clear")
    e.publish(pub, t, "kept", retain=True)
    e.publish(pub, t, "", retain=True, pid=2)
    live = e.marker(sub, pub, t)
    assert [p.payload for p in live] == [b"kept", b""], live
    assert not retained_for(e, "clear-late", t)


@check("MQTT-3.3.1-7")
def an_empty_retained_payload_is_not_stored(e):
    c, _ = e.connect("empty")
    t = e.topic("empty", "x")
    e.publish(c, t, "", retain=True)
    assert not retained_for(e, "empty-late", t)


@check("MQTT-3.3.1-8")
def retain_0_neither_stores_nor_clears(e):
    c, _ = e.connect("noretain")
    t = e.topic("noretain", "x")
    e.publish(c, t, "kept", retain=True)
    e.publish(c, t, "live", retain=False, pid=2)
    got = retained_for(e, "noretain-late", t)
    assert [(p.payload, p.retain) for p in got] == [(b"kept", True)], got


@check("MQTT-3.3.1-9", "MQTT-3.3.1-10", "MQTT-3.3.1-11", "MQTT-3.8.4-4")
def retain_handling(e):
    c, _ = e.connect("rh")
    t = e.topic("rh", "x")
    e.publish(c, t, "kept", retain=True)
    assert [p.payload for p in retained_for(e, "rh0", t, rh=0)] == [b"kept"]
    assert not retained_for(e, "rh2", t, rh=2), "retain handling 2 sent retained messages"
    sub, _ = e.connect("rh1", "b")
    for (rh, want) in [(1, [b"kept"]), (1, []), (0, [b"kept"])]:
        assert e.subscribe(sub, [(t, m.opts(1, rh=rh))]) == [1]
        got = e.marker(sub, c, t)
        assert [p.payload for p in got] == want, (rh, got)


@check("MQTT-3.3.1-12", "MQTT-3.3.1-13")
def retain_as_published(e):
    t = e.topic("rap", "x")
    sub, _ = e.connect("rap-sub", "b")
    assert e.subscribe(sub, [(e.topic("rap", "x"), m.opts(1, rap=0)),
                             (e.topic("rap", "+"), m.opts(1, rap=1))]) == [1, 1]
    pub, _ = e.connect("rap-pub")
    e.publish(pub, t, "flag", retain=True)
    got = e.until(sub, "flag")
    # One message matches both subscriptions; delivered once, the flag as one of them asks.
    assert got[-1].retain in (True, False)
    only0, _ = e.connect("rap0", "b")
    assert e.subscribe(only0, [(t, m.opts(1, rap=0, rh=2))]) == [1]
    only1, _ = e.connect("rap1", "b")
    assert e.subscribe(only1, [(t, m.opts(1, rap=1, rh=2))]) == [1]
    e.publish(pub, t, "again", retain=True, pid=2)
    assert e.until(only0, "again")[-1].retain is False
    assert e.until(only1, "again")[-1].retain is True


@check("MQTT-3.3.2-2", "MQTT-4.7.0-1")
def a_topic_name_with_wildcards_is_refused(e):
    c, _ = e.connect("wildpub")
    c.send(m.publish(e.topic("a", "+"), "x", 1, 1))
    got = c.until_closed()
    assert got and got[-1].kind == m.DISCONNECT and got[-1].reason >= 0x80, got


@check("MQTT-4.7.3-1")
def an_empty_topic_name_is_refused(e):
    c, _ = e.connect("emptytopic")
    c.send(m.publish("", "x", 1, 1))
    got = c.until_closed()
    assert got and got[-1].kind == m.DISCONNECT and got[-1].reason >= 0x80, got


@check("MQTT-3.3.2-4", "MQTT-3.3.2-15", "MQTT-3.3.2-16", "MQTT-3.3.2-17", "MQTT-3.3.2-18",
       "MQTT-3.3.2-20")
def properties_pass_through_unaltered(e):
    sub, pub, t = pair(e, "props")
    props = [(m.PAYLOAD_FORMAT, 1), (m.CONTENT_TYPE, "text/plain"),
             (m.RESPONSE_TOPIC, e.topic("props", "reply")), (m.CORRELATION_DATA, b"\x00\x01c"),
             (m.USER_PROPERTY, ("k", "2")), (m.USER_PROPERTY, ("a", "1")),
             (m.USER_PROPERTY, ("k", "1"))]
    e.publish(pub, t, "props", props=props)
    p = e.until(sub, "props")[-1]
    assert p.prop(m.PAYLOAD_FORMAT) == 1, p
    assert p.prop(m.CONTENT_TYPE) == "text/plain", p
    assert p.prop(m.RESPONSE_TOPIC) == e.topic("props", "reply"), p
    assert p.prop(m.CORRELATION_DATA) == b"\x00\x01c", p
    assert p.all(m.USER_PROPERTY) == [("k", "2"), ("a", "1"), ("k", "1")], p


@check("MQTT-3.3.2-14")
def a_response_topic_with_wildcards_is_refused(e):
    c, _ = e.connect("respwild")
    c.send(m.publish(e.topic("x"), "x", 1, 1, props=[(m.RESPONSE_TOPIC, e.topic("r", "#"))]))
    got = c.until_closed()
    assert got and got[-1].kind == m.DISCONNECT and got[-1].reason == 0x82, got


@check("MQTT-3.3.2-5")
def an_expired_message_is_not_delivered(e):
    t = e.topic("expiry", "x")
    c, _ = e.connect("expiry", "b", props=[(m.SESSION_EXPIRY, 60)])
    assert e.subscribe(c, [(t, m.opts(1))]) == [1]
    c.send(m.disconnect(0))
    c.until_closed()
    time.sleep(0.5)  # the detach race of `persistent_subscriber` (checks_connect.py)
    pub, _ = e.connect("expiry-pub")
    e.publish(pub, t, "stale", props=[(m.MESSAGE_EXPIRY, 1)])
    e.publish(pub, t, "fresh", pid=2, props=[(m.MESSAGE_EXPIRY, 300)])
    time.sleep(2.5)
    back, _ = e.connect("expiry", "b", clean=False, props=[(m.SESSION_EXPIRY, 60)])
    got = e.until(back, "fresh")
    assert [p.payload for p in got] == [b"fresh"], got


@check("MQTT-3.3.2-6")
def the_expiry_sent_is_what_is_left(e):
    c, _ = e.connect("expleft")
    t = e.topic("expleft", "x")
    e.publish(c, t, "aging", retain=True, props=[(m.MESSAGE_EXPIRY, 60)])
    time.sleep(2.2)
    got = retained_for(e, "expleft-late", t)
    assert len(got) == 1 and 0 < got[0].prop(m.MESSAGE_EXPIRY, 0) <= 58, got


@check("MQTT-3.3.2-7")
def topic_aliases_do_not_outlive_the_connection(e):
    t = e.topic("alias", "x")
    c, _ = e.connect("alias", props=[(m.SESSION_EXPIRY, 30)])
    e.publish(c, t, "set", props=[(m.TOPIC_ALIAS, 1)])
    c.close()
    c, _ = e.connect("alias", clean=False, props=[(m.SESSION_EXPIRY, 30)])
    c.send(m.publish("", "use", 1, 2, props=[(m.TOPIC_ALIAS, 1)]))
    got = c.until_closed()
    assert got and got[-1].kind == m.DISCONNECT and got[-1].reason >= 0x80, got


@check("MQTT-3.3.2-8")
def topic_alias_0_is_refused(e):
    c, _ = e.connect("alias0")
    c.send(m.publish(e.topic("x"), "x", 1, 1, props=[(m.TOPIC_ALIAS, 0)]))
    got = c.until_closed()
    assert got and got[-1].kind == m.DISCONNECT and got[-1].reason == 0x94, got


@check("MQTT-3.3.2-9")
def a_topic_alias_over_the_maximum_is_refused(e):
    c, ack = e.connect("aliasmax")
    most = ack.prop(m.TOPIC_ALIAS_MAXIMUM, 0)
    c.send(m.publish(e.topic("x"), "x", 1, 1, props=[(m.TOPIC_ALIAS, most + 1)]))
    got = c.until_closed()
    assert got and got[-1].kind == m.DISCONNECT and got[-1].reason == 0x94, got


@check("MQTT-3.3.2-12")
def every_topic_alias_up_to_the_maximum_is_accepted(e):
    sub, pub, t = pair(e, "aliasok")
    most = 0
    pub.close()
    pub, ack = e.connect("aliasok-pub2")
    most = ack.prop(m.TOPIC_ALIAS_MAXIMUM, 0)
    assert most >= 1, ack
    e.publish(pub, t, "set", props=[(m.TOPIC_ALIAS, most)])
    e.publish(pub, "", "use", pid=2, props=[(m.TOPIC_ALIAS, most)])
    got = e.until(sub, "use")
    assert [(p.topic, p.payload) for p in got] == [(t, b"set"), (t, b"use")], got


@check("MQTT-3.1.2-26", "MQTT-3.3.2-11")
def outbound_topic_aliases_stay_within_the_client_maximum(e):
    sub, pub, t = pair(e, "aliasout", props=[(m.TOPIC_ALIAS_MAXIMUM, 2)])
    for i in range(5):
        e.publish(pub, e.topic("aliasout", str(i)), "m%d" % i, pid=i + 1)
    for _ in range(2):
        for i in range(5):
            e.publish(pub, e.topic("aliasout", str(i)), "n%d" % i, pid=i + 1)
    got = e.until(sub, "n4")
    got += e.until(sub, "n4")
    aliases = [p.prop(m.TOPIC_ALIAS) for p in got if p.prop(m.TOPIC_ALIAS) is not None]
    assert all(1 <= a <= 2 for a in aliases), aliases


@check("MQTT-3.1.2-27")
def no_outbound_topic_aliases_without_a_client_maximum(e):
    sub, pub, t = pair(e, "noalias")
    for i in range(3):
        e.publish(pub, t, "same%d" % i, pid=i + 1)
    got = e.until(sub, "same2")
    assert all(p.prop(m.TOPIC_ALIAS) is None and p.topic == t for p in got), got


@check("MQTT-3.1.2-24", "MQTT-3.1.2-25")
def deliveries_over_the_client_maximum_packet_size_are_dropped(e):
    sub, pub, t = pair(e, "maxpkt", props=[(m.MAXIMUM_PACKET_SIZE, 256)])
    e.publish(pub, t, "x" * 400)
    e.publish(pub, t, "small", pid=2)
    got = e.until(sub, "small")
    assert [p.payload for p in got] == [b"small"], got


@check("MQTT-3.2.2-15")
def a_packet_over_the_server_maximum_is_refused(e):
    c, ack = e.connect("bigpkt")
    most = ack.prop(m.MAXIMUM_PACKET_SIZE)
    assert most, ack
    # Only the head of the packet: the fixed header already says it is too large, and a
    # server that closes early would otherwise reset the rest of the write.
    head = m.publish(e.topic("x"), b"", 0)
    body = head[2:]
    c.send(bytes([head[0]]) + m.varint(most + 1) + body + b"x" * 64)
    got = c.until_closed()
    assert got and got[-1].kind == m.DISCONNECT and got[-1].reason == 0x95, got


@check("MQTT-3.3.4-1", "MQTT-4.3.2-4", "MQTT-4.3.3-8", "MQTT-4.3.3-11")
def the_server_answers_each_qos(e):
    c, _ = e.connect("answers")
    c.send(m.publish(e.topic("q1"), "a", 1, 77))
    assert c.expect(m.PUBACK).pid == 77
    c.send(m.publish(e.topic("q2"), "b", 2, 78))
    assert c.expect(m.PUBREC).pid == 78
    c.send(m.ack(m.PUBREL, 78))
    assert c.expect(m.PUBCOMP).pid == 78


@check("MQTT-3.3.4-6")
def a_client_publish_with_a_subscription_id_is_refused(e):
    c, _ = e.connect("subidin")
    c.send(m.publish(e.topic("x"), "x", 1, 1, props=[(m.SUBSCRIPTION_ID, 3)]))
    got = c.until_closed()
    assert got and got[-1].kind == m.DISCONNECT and got[-1].reason == 0x82, got


@check("MQTT-3.3.4-9", "MQTT-3.3.4-10", "MQTT-4.9.0-2", "MQTT-4.9.0-3")
def receive_maximum_bounds_unacknowledged_deliveries(e):
    sub, pub, t = pair(e, "recvmax", props=[(m.RECEIVE_MAXIMUM, 2)])
    for i in range(4):
        e.publish(pub, t, "r%d" % i, pid=i + 1)
    first = [sub.expect(m.PUBLISH), sub.expect(m.PUBLISH)]
    sub.send(m.pingreq())
    extra = sub.quiet(1.0)
    assert [p.kind for p in extra] == [m.PINGRESP], extra
    sub.send(m.ack(m.PUBACK, first[0].pid))
    third = sub.expect(m.PUBLISH)
    assert third.payload == b"r2", third


@check("MQTT-3.4.2-1", "MQTT-3.5.2-1")
def ack_reason_codes_are_puback_codes(e):
    c, _ = e.connect("ackcodes")
    c.send(m.publish(e.locked("x"), "no", 1, 1))
    a = c.expect(m.PUBACK)
    c.send(m.publish(e.locked("x"), "no", 2, 2))
    r = c.expect(m.PUBREC)
    assert a.reason in PUBACK_CODES and a.reason >= 0x80, a
    assert r.reason in PUBACK_CODES and r.reason >= 0x80, r


@check("MQTT-3.6.1-1")
def pubrel_with_wrong_flags_is_malformed(e):
    c, _ = e.connect("pubrelflags")
    c.send(m.publish(e.topic("x"), "x", 2, 5))
    c.expect(m.PUBREC)
    c.send(m.ack(m.PUBREL, 5, flags=0))
    got = c.until_closed()
    assert all(p.kind == m.DISCONNECT and p.reason >= 0x80 for p in got), got


@check("MQTT-4.3.2-5")
def a_qos_1_packet_id_is_new_after_its_puback(e):
    sub, pub, t = pair(e, "q1new")
    for payload in ("one", "two"):
        pub.send(m.publish(t, payload, 1, 9, dup=payload == "two"))
        pub.expect(m.PUBACK)
    got = e.until(sub, "two")
    assert [p.payload for p in got] == [b"one", b"two"], got


@check("MQTT-4.3.3-10")
def a_resent_qos_2_publish_is_not_delivered_twice(e):
    sub, pub, t = pair(e, "q2dup", qos=2)
    pub.send(m.publish(t, "once", 2, 11))
    pub.expect(m.PUBREC)
    pub.send(m.publish(t, "once", 2, 11, dup=True))
    assert pub.expect(m.PUBREC).pid == 11
    pub.send(m.ack(m.PUBREL, 11))
    pub.expect(m.PUBCOMP)
    got = e.marker(sub, pub, t)
    assert [p.payload for p in got] == [b"once"], got


@check("MQTT-4.3.3-12")
def a_qos_2_packet_id_is_new_after_its_pubcomp(e):
    sub, pub, t = pair(e, "q2new", qos=2)
    e.publish(pub, t, "one", qos=2, pid=12)
    e.publish(pub, t, "two", qos=2, pid=12)
    got = e.until(sub, "two")
    assert [p.payload for p in got] == [b"one", b"two"], got


@check("MQTT-4.3.3-9")
def a_qos_2_packet_id_is_new_after_a_refusing_pubrec(e):
    sub, pub, t = pair(e, "q2ref", qos=2)
    pub.send(m.publish(e.locked("x"), "no", 2, 13))
    assert pub.expect(m.PUBREC).reason >= 0x80
    e.publish(pub, t, "yes", qos=2, pid=13)
    assert [p.payload for p in e.until(sub, "yes")] == [b"yes"]


@check("MQTT-4.3.2-1", "MQTT-4.3.3-1", "MQTT-4.3.3-2")
def outbound_packet_ids_are_unused_and_non_zero(e):
    sub, pub, t = pair(e, "pids", qos=2)
    for i, q in enumerate([1, 2, 1, 2]):
        e.publish(pub, t, "p%d" % i, qos=q, pid=i + 1)
    got = [sub.expect(m.PUBLISH) for _ in range(4)]
    ids = [p.pid for p in got]
    assert all(ids) and len(set(ids)) == 4, got
    assert all(not p.dup for p in got), got


@check("MQTT-4.3.3-4", "MQTT-4.3.3-6")
def the_server_releases_and_does_not_resend_after_pubrel(e):
    t = e.topic("rel", "x")
    sub, _ = e.connect("rel", "b", props=[(m.SESSION_EXPIRY, 60)])
    assert e.subscribe(sub, [(t, m.opts(2))]) == [2]
    pub, _ = e.connect("rel-pub")
    e.publish(pub, t, "rel", qos=2, pid=3)
    p = sub.expect(m.PUBLISH)
    sub.send(m.ack(m.PUBREC, p.pid))
    rel = sub.expect(m.PUBREL)
    assert rel.pid == p.pid, rel
    sub.close()
    back, _ = e.connect("rel", "b", clean=False, props=[(m.SESSION_EXPIRY, 60)])
    again = back.recv(5)
    assert again is not None and again.kind == m.PUBREL and again.pid == p.pid, again
    back.send(m.ack(m.PUBCOMP, p.pid))
    assert not [x for x in back.quiet(0.5) if x.kind == m.PUBLISH]


@check("MQTT-4.5.0-1", "MQTT-4.6.0-5", "MQTT-4.6.0-6")
def every_subscriber_gets_each_message_in_order(e):
    sub, pub, t = pair(e, "order")
    other, _ = e.connect("order-other", "a")
    assert e.subscribe(other, [(t, m.opts(1))]) == [1]
    for i in range(20):
        e.publish(pub, t, "o%02d" % i, pid=i + 1)
    want = [b"o%02d" % i for i in range(20)]
    assert [p.payload for p in e.until(sub, "o19")] == want
    assert [p.payload for p in e.until(other, "o19")] == want
