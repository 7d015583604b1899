"""pylibmc (libmemcached) with the binary protocol against the server at
127.0.0.1:<port>: single and multi-key commands (libmemcached pipelines
multi-gets as getkq + noop), cas, counters, touch, stats, and the noreply
behaviour (quiet opcodes). Usage: python3 pylibmc_check.py <port>."""
import sys
import time

import pylibmc

port = int(sys.argv[1])


def client(**behaviors):
    return pylibmc.Client(
        ["127.0.0.1:%d" % port],
        binary=True,
        behaviors=dict({"cas": True, "connect_timeout": 5000, "receive_timeout": 5000000}, **behaviors),
    )


def check(cond, what):
    if not cond:
        raise SystemExit("pylibmc: FAILED: " + what)


def raises(exc, what, fn, *args):
    """Calls fn and checks that it raises exc (libmemcached maps a binary
    status to an error where the text protocol gives False)."""
    try:
        fn(*args)
    except exc:
        return
    raise SystemExit("pylibmc: FAILED: %s does not raise %s" % (what, exc.__name__))


c = client()
check(c.flush_all(), "flush_all")
check(c.set("py:k", b"v1"), "set")
check(c.get("py:k") == b"v1", "get")
check(c.get("py:missing") is None, "get of a missing key")
# pylibmc keeps its type in the flags: ints and str round trip.
check(c.set("py:int", 42) and c.get("py:int") == 42, "int value through flags")
check(c.set("py:str", "caf\u00e9") and c.get("py:str") == "caf\u00e9", "str value through flags")

check(c.add("py:new", b"a") is True, "add of a new key")
check(c.add("py:new", b"b") is False, "add of an existing key")
check(c.replace("py:new", b"c") is True, "replace of an existing key")
raises(pylibmc.NotFound, "replace of a missing key", c.replace, "py:none", b"c")
check(c.append("py:new", b">") is True, "append")
check(c.prepend("py:new", b"<") is True, "prepend")
check(c.get("py:new") == b"<c>", "value after append and prepend: %r" % c.get("py:new"))
check(c.append("py:none", b"x") is False, "append to a missing key")

value, cas = c.gets("py:new")
check(value == b"<c>" and cas > 0, "gets returns a cas")
check(c.cas("py:new", b"d", cas) is True, "cas with the current cas")
check(c.cas("py:new", b"e", cas) is False, "cas with a stale cas")
check(c.get("py:new") == b"d", "value after cas")

check(c.set("py:n", b"10"), "set counter")
check(c.incr("py:n", 5) == 15, "incr")
check(c.decr("py:n", 100) == 0, "decr stops at 0")
raises(pylibmc.NotFound, "incr of a missing key", c.incr, "py:nocounter", 1)

check(c.touch("py:k", 100) is True, "touch")
check(c.touch("py:missing", 100) is False, "touch of a missing key")

check(c.delete("py:k") is True, "delete")
check(c.delete("py:k") is False, "delete of a missing key")

# Multi-key commands pipeline quiet requests ended by a noop.
items = {"py:m%d" % i: ("v%d" % i).encode() for i in range(100)}
check(c.set_multi(items) == [], "set_multi stores every key")
wanted = list(items) + ["py:absent1", "py:absent2"]
check(c.get_multi(wanted) == items, "get_multi returns the hits only")
check(c.delete_multi(list(items)[:50]) is True, "delete_multi")
check(len(c.get_multi(list(items))) == 50, "get_multi after delete_multi")

# Binary values and keys with bytes text clients cannot send.
blob = bytes(range(256)) * 4
check(c.set("py:blob", blob) and c.get("py:blob") == blob, "binary value round trip")

# noreply: libmemcached then sends the quiet opcodes.
# A quiet command that fails is answered (memcached does so), which
# libmemcached would take for the reply of the next request: only commands
# that succeed here.
check(c.set("py:quiet-del", b"x"), "set before a quiet delete")
q = client(_noreply=True)
q.set("py:quiet", b"q1")
q.set("py:quiet", b"q2")
q.delete("py:quiet-del")
check(q.get("py:quiet") == b"q2", "quiet sets applied in order, before the next request")
check(q.get("py:quiet-del") is None, "quiet delete applied")
q.disconnect_all()

# Expiry.
check(c.set("py:short", b"x", time=1), "set with time 1")
deadline = time.time() + 10
while c.get("py:short") is not None:
    check(time.time() < deadline, "an item with time 1 expires")
    time.sleep(0.1)

stats = c.get_stats()
check(len(stats) == 1, "one server in get_stats")
server, fields = stats[0]
for name in (b"pid", b"uptime", b"version", b"curr_items", b"cmd_get", b"cmd_set"):
    check(name.decode() in fields or name in fields, "stats has %s" % name.decode())

check(c.flush_all(), "flush_all")
check(c.get("py:new") is None, "get after flush_all")
print("pylibmc: all checks passed")
