# Real MQTT v5 clients (paho) for tests/it/hostile/quotas.rs: user properties, correlation data,
# delayed wills and retained messages, which mosquitto_pub cannot all send.
import sys, time, os
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

def client(cid, user, key):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
    c.username_pw_set(user, key)
    c.events = []
    c.on_connect = lambda c, u, f, rc, p: c.events.append(("connack", rc.value))
    c.on_publish = lambda c, u, mid, rc, p: c.events.append(("puback", rc.value))
    c.on_subscribe = lambda c, u, mid, rcs, p: c.events.append(("suback", rcs[0].value))
    c.on_message = lambda c, u, m: c.events.append(("msg", m.payload.decode(errors="replace")))
    c.on_disconnect = lambda c, u, f, rc, p: c.events.append(("disconnect", rc.value))
    return c

def pump(c, kind, secs=3.0):
    end = time.time() + secs
    while time.time() < end:
        c.loop(0.05)
        if any(e[0] == kind for e in c.events) or any(e[0] == "disconnect" for e in c.events):
            break

mode, host, port, user, key = sys.argv[1:6]
port = int(port)
rest = sys.argv[6:]
if mode == "publish":
    topic, kind, size = rest[0], rest[1], int(rest[2])
    c = client("hostile-pub", user, key)
    c.connect(host, port, clean_start=True)
    pump(c, "connack")
    props = Properties(PacketTypes.PUBLISH)
    if kind == "user":
        # 30 properties (within the default cap of 32) sharing `size` bytes.
        props.UserProperty = [("k%d" % i, "v" * (size // 30)) for i in range(30)]
    elif kind == "many":
        props.UserProperty = [("k%d" % i, "v") for i in range(size)]
    elif kind == "corr":
        props.CorrelationData = b"c" * size
    else:
        props = None
    c.publish(topic, b"tiny", qos=1, retain=True, properties=props)
    pump(c, "puback")
    for e in c.events:
        print(*e)
elif mode == "retained":
    flt = rest[0]
    c = client(rest[1], user, key)
    c.connect(host, port, clean_start=True)
    pump(c, "connack")
    c.subscribe(flt, qos=0)
    end = time.time() + 1.0
    while time.time() < end:
        c.loop(0.05)
    for e in c.events:
        print(*e)
elif mode == "wills":
    topic, size, delay, expiry, n = rest[0], int(rest[1]), int(rest[2]), int(rest[3]), int(rest[4])
    for i in range(n):
        c = client("hostile-will-%d" % i, user, key)
        wp = Properties(PacketTypes.WILLMESSAGE)
        wp.WillDelayInterval = delay
        c.will_set(topic, b"w" * size, qos=0, properties=wp)
        cp = Properties(PacketTypes.CONNECT)
        if expiry > 0:
            cp.SessionExpiryInterval = expiry
        c.connect(host, port, clean_start=True, properties=cp)
        pump(c, "connack")
        for e in c.events:
            print(*e)
        # Dropped, not disconnected: the will is due.
        s = c.socket()
        if s is not None:
            s.close()
elif mode == "resume":
    # Connects again with clean start 0 and says whether the session was there.
    c = client(rest[0], user, key)
    c.on_connect = lambda c, u, f, rc, p: c.events.append(
        ("connack", "%d present %d" % (rc.value, int(f.session_present))))
    cp = Properties(PacketTypes.CONNECT)
    cp.SessionExpiryInterval = 0
    c.connect(host, port, clean_start=False, properties=cp)
    pump(c, "connack")
    c.disconnect()
    for e in c.events:
        print(*e)
