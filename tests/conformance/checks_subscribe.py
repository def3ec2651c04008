"""Checks of MQTT 5 §3.8–§3.11 (SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK), subscription
options and identifiers (§3.3.4), topic filters (§4.7) and shared subscriptions (§4.8)."""
import mqtt5 as m
from harness import check

SUBACK_CODES = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2}
UNSUBACK_CODES = {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91}


def refused_and_closed(c, data, reason=None):
    c.send(data)
    got = c.until_closed()
    assert all(p.kind == m.DISCONNECT and p.reason >= 0x80 for p in got), got
    if reason is not None:
        assert got and got[-1].reason == reason, got


@check("MQTT-3.8.1-1")
def subscribe_with_wrong_flags_is_malformed(e):
    c, _ = e.connect("subflags")
    refused_and_closed(c, m.subscribe(1, [(e.topic("x"), 1)], flags=0))


@check("MQTT-3.8.3-2")
def subscribe_without_filters_is_refused(e):
    c, _ = e.connect("subempty")
    refused_and_closed(c, m.subscribe(1, []))


@check("MQTT-3.8.3-5")
def reserved_subscription_option_bits_are_malformed(e):
    c, _ = e.connect("subreserved")
    refused_and_closed(c, m.subscribe(1, [(e.topic("x"), 0xC1)]))


@check("MQTT-3.8.3-3")
def no_local(e):
    t = e.topic("nolocal", "x")
    c, _ = e.connect("nolocal")
    assert e.subscribe(c, [(t, m.opts(1, nl=1))]) == [1]
    other, _ = e.connect("nolocal-other", "b")
    assert e.subscribe(other, [(t, m.opts(1))]) == [1]
    e.publish(c, t, "own")
    # From a connection of its own: `other` is a subscriber and gets "own" first.
    theirs, _ = e.connect("nolocal-theirs", "b")
    e.publish(theirs, t, "theirs")
    got = e.until(c, "theirs")
    assert [p.payload for p in got] == [b"theirs"], got
    assert [p.payload for p in e.until(other, "theirs")] == [b"own", b"theirs"]


@check("MQTT-3.8.3-4")
def no_local_on_a_shared_subscription_is_a_protocol_error(e):
    c, _ = e.connect("sharenl")
    refused_and_closed(c, m.subscribe(1, [("$share/g/" + e.topic("x"), m.opts(1, nl=1))]),
                       0x82)


@check("MQTT-3.8.4-1", "MQTT-3.8.4-2")
def subscribe_is_answered_with_its_packet_id(e):
    c, _ = e.connect("subpid")
    c.send(m.subscribe(4242, [(e.topic("x"), m.opts(1))]))
    ack = c.expect(m.SUBACK)
    assert ack.pid == 4242 and ack.codes == [1], ack


@check("MQTT-3.8.4-3")
def an_identical_filter_replaces_the_subscription(e):
    t = e.topic("replace-sub", "x")
    c, _ = e.connect("replacesub", "b")
    assert e.subscribe(c, [(t, m.opts(1))]) == [1]
    assert e.subscribe(c, [(t, m.opts(0))], pid=2) == [0]
    pub, _ = e.connect("replacesub-pub")
    e.publish(pub, t, "once")
    got = e.until(c, "once")
    assert [(p.payload, p.qos) for p in got] == [(b"once", 0)], got


@check("MQTT-3.8.4-5", "MQTT-3.8.4-6", "MQTT-3.8.4-7", "MQTT-3.9.3-1", "MQTT-3.9.3-2")
def one_suback_with_a_code_per_filter_in_order(e):
    c, _ = e.connect("multi")
    codes = e.subscribe(c, [(e.topic("m", "1"), m.opts(1)), (e.locked("x"), m.opts(1)),
                            (e.topic("m", "2"), m.opts(2)), (e.topic("m", "3"), m.opts(0)),
                            (e.topic("a", "#", "b"), m.opts(0))])
    assert codes[:4] == [1, 0x87, 2, 0] and codes[4] >= 0x80, codes
    assert all(x in SUBACK_CODES for x in codes), codes


@check("MQTT-3.8.4-8", "MQTT-4.8.2-3")
def deliveries_go_at_the_lower_of_published_and_granted_qos(e):
    t = e.topic("minqos", "x")
    c, _ = e.connect("minqos", "b")
    assert e.subscribe(c, [(t, m.opts(1))]) == [1]
    share, _ = e.connect("minqos-share", "b")
    assert e.subscribe(share, [("$share/g%s/%s" % (e.run, t), m.opts(1))]) == [1]
    high, _ = e.connect("minqos-high", "b")
    assert e.subscribe(high, [(t, m.opts(2))]) == [2]
    pub, _ = e.connect("minqos-pub")
    e.publish(pub, t, "q2", qos=2)
    e.publish(pub, t, "q0", qos=0)
    e.publish(pub, t, "end", qos=1, pid=3)
    assert [(p.payload, p.qos) for p in e.until(c, "end")] == [(b"q2", 1), (b"q0", 0),
                                                               (b"end", 1)]
    assert [(p.payload, p.qos) for p in e.until(share, "end")] == [(b"q2", 1), (b"q0", 0),
                                                                   (b"end", 1)]
    assert [(p.payload, p.qos) for p in e.until(high, "end")] == [(b"q2", 2), (b"q0", 0),
                                                                  (b"end", 1)]


@check("MQTT-3.3.4-2", "MQTT-3.3.4-3", "MQTT-3.3.4-4")
def overlapping_subscriptions(e):
    c, _ = e.connect("overlap", "b")
    assert e.subscribe(c, [(e.topic("ov", "#"), m.opts(2))], props=[(m.SUBSCRIPTION_ID, 1)]) \
        == [2]
    assert e.subscribe(c, [(e.topic("ov", "+"), m.opts(1))], pid=2,
                       props=[(m.SUBSCRIPTION_ID, 2)]) == [1]
    pub, _ = e.connect("overlap-pub")
    e.publish(pub, e.topic("ov", "x"), "both", qos=2)
    got = e.marker(c, pub, e.topic("ov", "x"))
    assert len(got) == 1 and got[0].qos == 2, got
    assert sorted(got[0].all(m.SUBSCRIPTION_ID)) == [1, 2], got


@check("§3.8.2.1.2")
def subscription_identifier_0_is_a_protocol_error(e):
    c, _ = e.connect("subid0")
    refused_and_closed(c, m.subscribe(1, [(e.topic("x"), 1)], props=[(m.SUBSCRIPTION_ID, 0)]),
                       0x82)


@check("MQTT-3.10.1-1")
def unsubscribe_with_wrong_flags_is_malformed(e):
    c, _ = e.connect("unsubflags")
    refused_and_closed(c, m.unsubscribe(1, [e.topic("x")], flags=0))


@check("MQTT-3.10.3-2")
def unsubscribe_without_filters_is_refused(e):
    c, _ = e.connect("unsubempty")
    refused_and_closed(c, m.unsubscribe(1, []))


@check("MQTT-3.10.4-1", "MQTT-3.10.4-2", "MQTT-3.10.4-4", "MQTT-3.10.4-5")
def unsubscribe_compares_filters_exactly(e):
    c, _ = e.connect("unsub", "b")
    assert e.subscribe(c, [(e.topic("un", "+"), m.opts(1))]) == [1]
    pub, _ = e.connect("unsub-pub")
    c.send(m.unsubscribe(7, [e.topic("un", "x")]))
    ack = c.expect(m.UNSUBACK)
    assert ack.pid == 7 and ack.codes == [0x11], ack
    assert [p.payload for p in e.until_pub(c, pub, e.topic("un", "x"), "still")] == [b"still"]
    c.send(m.unsubscribe(8, [e.topic("un", "+")]))
    ack = c.expect(m.UNSUBACK)
    assert ack.pid == 8 and ack.codes == [0x00], ack
    keep = e.topic("un2", "x")
    assert e.subscribe(c, [(keep, m.opts(1))], pid=9) == [1]
    e.publish(pub, e.topic("un", "x"), "gone")
    got = e.marker(c, pub, keep)
    assert not got, "delivered after UNSUBACK: %r" % got


@check("MQTT-3.10.4-6", "MQTT-3.11.3-1", "MQTT-3.11.3-2")
def one_unsuback_with_a_code_per_filter_in_order(e):
    c, _ = e.connect("unsubmulti")
    assert e.subscribe(c, [(e.topic("um", "a"), m.opts(1))]) == [1]
    c.send(m.unsubscribe(3, [e.topic("um", "b"), e.topic("um", "a"), e.topic("um", "a")]))
    ack = c.expect(m.UNSUBACK)
    assert ack.codes == [0x11, 0x00, 0x11], ack
    assert all(x in UNSUBACK_CODES for x in ack.codes), ack


@check("MQTT-3.3.2-3", "MQTT-4.7.1-2")
def single_level_wildcard_matches_one_level(e):
    c, _ = e.connect("plus", "b")
    assert e.subscribe(c, [(e.topic("pl", "+", "q"), m.opts(1))]) == [1]
    pub, _ = e.connect("plus-pub")
    e.publish(pub, e.topic("pl", "x", "y", "q"), "deep")
    e.publish(pub, e.topic("pl", "x", "q"), "one")
    got = e.until(c, "one")
    assert [(p.topic, p.payload) for p in got] == [(e.topic("pl", "x", "q"), b"one")], got
    assert e.subscribe(c, [(e.topic("pl", "a+"), m.opts(1))], pid=2)[0] >= 0x80


@check("MQTT-4.7.1-1")
def multi_level_wildcard_must_be_last(e):
    c, _ = e.connect("hash", "b")
    codes = e.subscribe(c, [(e.topic("h", "#", "b"), m.opts(1)), (e.topic("h", "a#"), m.opts(1)),
                            (e.topic("h", "#"), m.opts(1))])
    assert codes[0] >= 0x80 and codes[1] >= 0x80 and codes[2] == 1, codes
    pub, _ = e.connect("hash-pub")
    e.publish(pub, e.topic("h"), "parent")
    got = e.until(c, "parent")
    assert [p.topic for p in got] == [e.topic("h")], got


@check("MQTT-4.7.2-1")
def leading_wildcards_never_match_dollar_topics(e):
    # Filters that start with a wildcard are refused outright, so none can match `$` topics.
    c, _ = e.connect("dollar", "b")
    codes = e.subscribe(c, [("#", m.opts(0)), ("+/%s/c/%s/#" % (e.tenant, e.channel), m.opts(0))])
    assert all(x >= 0x80 for x in codes), codes


@check("MQTT-4.7.3-4")
def topics_are_not_normalised(e):
    c, _ = e.connect("norm", "b")
    assert e.subscribe(c, [(e.topic("nm", "Ab"), m.opts(1)), (e.topic("nm", "x", "", "y"),
                                                              m.opts(1))]) == [1, 1]
    pub, _ = e.connect("norm-pub")
    for t in (e.topic("nm", "ab"), e.topic("nm", "x", "y"), e.topic("nm", "Ab ")):
        e.publish(pub, t, "no")
    e.publish(pub, e.topic("nm", "x", "", "y"), "yes")
    got = e.until(c, "yes")
    assert [p.payload for p in got] == [b"yes"], got


@check("MQTT-4.8.2-1", "MQTT-4.8.2-2")
def share_names_are_checked(e):
    c, _ = e.connect("sharename", "b")
    t = e.topic("x")
    codes = e.subscribe(c, [("$share//" + t, m.opts(1)), ("$share/g+/" + t, m.opts(1)),
                            ("$share/g", m.opts(1))])
    assert all(x >= 0x80 for x in codes), codes


@check("MQTT-4.8.2-6")
def a_refused_shared_delivery_is_not_offered_again(e):
    t = e.topic("shref", "x")
    group = "$share/r%s/%s" % (e.run, t)
    members = []
    for i in range(2):
        c, _ = e.connect("shref%d" % i, "b")
        assert e.subscribe(c, [(group, m.opts(1))]) == [1]
        members.append(c)
    pub, _ = e.connect("shref-pub")
    e.publish(pub, t, "refuse-me")
    got = None
    for c in members:
        p = c.recv(5 if got is None else 1.0)
        if p is not None and p.kind == m.PUBLISH:
            assert got is None, "delivered to both members"
            got = p
            c.send(m.ack(m.PUBACK, p.pid, 0x80))
    assert got is not None, "no member got the message"
    for c in members:
        again = [p for p in c.quiet(1.0) if p.kind == m.PUBLISH]
        assert not again, "offered again after PUBACK 0x80: %r" % again


@check("§4.8.2")
def shared_subscriptions_on_a_persistent_session_are_refused(e):
    # Deliberately refused (MQTT.md): a persistent session's router link cannot hold a
    # shared subscription, so SUBACK says 0x9E (Shared Subscriptions not supported).
    c, _ = e.connect("sharepersist", "b", props=[(m.SESSION_EXPIRY, 60)])
    assert e.subscribe(c, [("$share/p/" + e.topic("x"), m.opts(1))]) == [0x9E]
