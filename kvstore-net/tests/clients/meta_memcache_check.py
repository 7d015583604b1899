"""Drives kvstore-server's meta commands with the meta-memcache client
(PyPI `meta-memcache`), the way an application would. Usage:
meta_memcache_check.py <host> <port>. Prints `ok` and exits 0 when every
check passes; an assertion names the first one that fails."""

import sys
import threading

from meta_memcache import (
    CacheClient,
    Key,
    LeasePolicy,
    RecachePolicy,
    ServerAddress,
    SetMode,
    StalePolicy,
    connection_pool_factory_builder,
)


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    client = CacheClient.cache_client_from_servers(
        servers=[ServerAddress(host=host, port=port)],
        connection_pool_factory_fn=connection_pool_factory_builder(
            recv_timeout=5, connection_timeout=5
        ),
    )

    # Values of several types round-trip (the client flags carry the type).
    for key, value in [
        ("str", "hello"),
        ("int", 42),
        ("bytes", b"\x00\xffraw\r\n"),
        ("dict", {"a": [1, 2, 3]}),
        ("big", "x" * 200_000),
    ]:
        assert client.set(key, value, ttl=0), key
        assert client.get(key) == value, key
    assert client.get("absent") is None

    # Unicode and long keys travel base64-encoded (the `b` flag).
    for key in ["héllo wörld", "k" * 400]:
        assert client.set(Key(key), "v", ttl=60), key
        assert client.get(Key(key)) == "v", key
        assert client.delete(Key(key)), key
        assert client.get(Key(key)) is None, key

    # Multi-get pipelines quiet gets ended by `mn`.
    values = {f"m{i}": i for i in range(20)}
    for k, v in values.items():
        client.set(k, v, ttl=0)
    got = client.multi_get([*values.keys(), "m-absent"])
    assert {k.key: v for k, v in got.items()} == {**values, "m-absent": None}, got

    # Compare and swap is not checked through this client: its reply parser
    # (meta-memcache-socket 0.3.1) reads cas tokens as 32-bit numbers and
    # drops larger ones, and kvstore's cas numbers are at least 2^40 (the
    # store's epoch is in the high bits). tests/meta_wire.rs checks `c` and
    # `C` on bytes. A cas the client never saw still refuses the store:
    client.set("c", "one", ttl=0)
    value, cas = client.get_cas("c")
    assert value == "one", value
    assert not client.set("c", "three", ttl=0, cas_token=12345)
    assert client.get("c") == "one"

    # Modes.
    assert not client.set("mode", "x", ttl=0, set_mode=SetMode.REPLACE)
    assert client.set("mode", "a", ttl=0, set_mode=SetMode.ADD)
    assert not client.set("mode", "b", ttl=0, set_mode=SetMode.ADD)
    assert client.set("mode", "b", ttl=0, set_mode=SetMode.REPLACE)
    assert client.get("mode") == "b"

    # Touch, TTLs, delete and invalidate.
    assert client.touch("mode", ttl=100)
    assert not client.touch("absent", ttl=100)
    assert client.delete("mode")
    assert not client.delete("mode")
    assert client.invalidate("mode")

    # Counters.
    assert not client.delta("n", 1)
    assert client.delta_initialize("n", 1, initial_value=10, initial_ttl=60)
    assert client.delta_and_get("n", 5) == 15
    assert client.delta_and_get("n", -3) == 12
    assert client.delta_initialize_and_get("n2", 2, initial_value=7, initial_ttl=60) == 7
    assert client.delta_initialize_and_get("n2", 2, initial_value=7, initial_ttl=60) == 9

    # Lease on a miss: one winner gets the miss and fills the cache, a
    # concurrent loser waits and then reads the winner's value.
    lease = LeasePolicy(ttl=30, miss_retries=20, miss_retry_wait=0.05)
    assert client.get_or_lease("lease", lease_policy=lease) is None  # we won
    result = {}

    def loser() -> None:
        result["value"] = client.get_or_lease("lease", lease_policy=lease)

    t = threading.Thread(target=loser)
    t.start()
    assert client.set("lease", "filled", ttl=60)
    t.join(timeout=10)
    assert result.get("value") == "filled", result

    # Stale-while-revalidate: an invalidation marks the item stale; the
    # first reader wins the recache (sees a miss), the others keep getting
    # the stale value until it is recached.
    stale = StalePolicy(mark_stale_on_deletion_ttl=30)
    client.set("s", "old", ttl=60)
    assert client.invalidate("s", stale_policy=stale)
    assert client.get("s") is None  # won the recache
    assert client.get("s") == "old"  # someone else is recaching
    assert client.set("s", "new", ttl=60)
    assert client.get("s") == "new"

    # Recache before expiry: with less TTL left than the policy's, one
    # reader is told to recache; the value is still served to the others.
    client.set("r", "v", ttl=5)
    recache = RecachePolicy(ttl=30)
    assert client.get("r", recache_policy=recache) is None  # won
    assert client.get("r", recache_policy=recache) == "v"

    print("ok")


if __name__ == "__main__":
    main()
