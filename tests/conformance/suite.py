"""The MQTT 5 conformance suite's runner: runs every check against a server and prints one
JSON line per statement id ({"id", "ok", "what", "detail"}), then "done".

Usage: suite.py HOST PORT TENANT CHANNEL USER_A KEY_A USER_B KEY_B [--list]
The two users are things granted publish and subscribe on CHANNEL (maxQos 2, retained
allowed); nothing grants them the channel `locked`. Checks run concurrently, each on its
own client ids and topics, so a check cannot see another's messages.
"""
import json
import os
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mqtt5 as m  # noqa: E402

from harness import CHECKS, Env  # noqa: E402


def run(env, ids, fn):
    try:
        fn(env)
        return [(i, True, "") for i in ids]
    except Exception as e:  # a failed check is reported, never fatal to the suite
        detail = "%s: %s" % (type(e).__name__, e)
        if not isinstance(e, AssertionError):
            detail += " " + traceback.format_exc(limit=3).replace("\n", " | ")
        return [(i, False, detail) for i in ids]


def main():
    import checks_connect  # noqa: F401  (the modules register their checks)
    import checks_publish  # noqa: F401
    import checks_subscribe  # noqa: F401
    if "--list" in sys.argv:
        for ids, fn in CHECKS:
            for i in ids:
                print(json.dumps({"id": i, "check": fn.__name__}))
        return
    host, port, tenant, channel, ua, ka, ub, kb = sys.argv[1:9]
    env = Env(host, port, tenant, channel, (ua, ka), (ub, kb))
    only = os.environ.get("CONFORMANCE_ONLY")
    chosen = [(i, f) for i, f in CHECKS if not only or only in i or only == f.__name__]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda c: run(env, *c), chosen))
    env.close_all()
    for (ids, fn), res in zip(chosen, results):
        for i, ok, detail in res:
            print(json.dumps({"id": i, "ok": ok, "check": fn.__name__, "detail": detail}))
    print(json.dumps({"done": len(chosen), "secs": round(time.monotonic() - started, 1)}))


if __name__ == "__main__":
    main()
