"""Pure parts of the bus: permissions, server config, credentials, stream layout, config checks."""

from __future__ import annotations

import itertools
import stat

import pytest
from nats.js import api

from bus.config import BusServerConfig, StreamLimits
from bus.permissions import ROLES, inbox_prefix, role_permissions
from bus.provision import MAX_DELIVERIES_ADVISORY, actor_consumer_config, run_layout
from bus.server import RoleCredentials, generate_credentials, render_server_config
from protocol import Subjects
from tracerl.config import ConfigError, RunConfig, load_config


def test_actor_may_never_write_weights_or_the_policy_version() -> None:
    s = Subjects("r1")
    actor = role_permissions("actor", ["r1"]).publish
    assert not any(p.startswith("$O.") for p in actor)
    assert f"$KV.{s.state_bucket}.{Subjects.POLICY_VERSION_KEY}" not in actor
    assert not any(p.startswith("$JS.API.STREAM.PURGE") for p in actor)
    assert s.weights_announce not in actor
    assert f"$KV.{s.state_bucket}.actors.*" in actor
    assert s.nodes in actor and s.dead_letter in actor
    # Its own consumers only with a per-actor work filter.
    creates = [p for p in actor if p.startswith(f"$JS.API.CONSUMER.CREATE.{s.work_stream}")]
    assert creates == [f"$JS.API.CONSUMER.CREATE.{s.work_stream}.*.{s.prefix}.work.actor.*"]


def test_actors_ask_to_join_the_broadcast_under_their_own_key_and_only_the_learner_sets_the_group() -> None:
    s = Subjects("r1")
    group_key = f"$KV.{s.state_bucket}.{Subjects.BROADCAST_GROUP_KEY}"
    shared = role_permissions("actor", ["r1"]).publish
    assert f"$KV.{s.state_bucket}.broadcast.*" in shared and group_key not in shared
    one = role_permissions("actor", ["r1"], actor_id="a1").publish
    assert f"$KV.{s.state_bucket}.{Subjects.broadcast_join_key('a1')}" in one
    assert not any(p.endswith(("broadcast.*", "broadcast.a2")) for p in one) and group_key not in one
    assert group_key in role_permissions("learner", ["r1"]).publish
    assert group_key not in role_permissions("allocator", ["r1"]).publish


def test_only_the_learner_writes_weights_and_only_admin_has_everything() -> None:
    s = Subjects("r1")
    learner = role_permissions("learner", ["r1"]).publish
    assert f"$O.{s.weights_bucket}.>" in learner
    assert f"$KV.{s.state_bucket}.{Subjects.POLICY_VERSION_KEY}" in learner
    assert s.work_shared not in learner and s.nodes not in learner
    allocator = role_permissions("allocator", ["r1"]).publish
    assert s.work_shared in allocator and s.trees in allocator and s.nodes not in allocator
    assert not any(p.startswith(("$O.", "$KV.")) for p in allocator)
    assert role_permissions("admin", ["r1"]).publish == (">",)
    with pytest.raises(ValueError, match="unknown role"):
        role_permissions("root", ["r1"])


def test_permissions_are_exact_per_run_and_inboxes_per_role() -> None:
    for role in ("actor", "allocator", "learner"):
        both = role_permissions(role, ["r1", "r2"])
        assert set(role_permissions(role, ["r1"]).publish) < set(both.publish)
        assert not any("tracerl.*" in p for p in both.publish)
        assert f"{inbox_prefix(role)}.>" in both.subscribe
        others = {f"{inbox_prefix(o)}.>" for o in ROLES if o != role}
        assert not others & set(both.subscribe)


def test_server_config_has_one_user_per_role_with_its_permissions() -> None:
    counter = itertools.count()
    creds = generate_credentials(["nats://127.0.0.1:1"], lambda: f"pw{next(counter)}")
    assert [c.password for c in creds.values()] == ["pw0", "pw1", "pw2", "pw3"]
    rendered = render_server_config(
        host="127.0.0.1",
        port=1,
        monitor_port=2,
        store_dir="/s",
        pid_file="/p",
        max_payload=8 << 20,
        credentials=creds,
        run_ids=["r1"],
    )
    assert rendered["jetstream"] == {"store_dir": "/s"}
    assert rendered["http"] == "127.0.0.1:2"
    limited = render_server_config(
        host="127.0.0.1",
        port=1,
        monitor_port=2,
        store_dir="/s",
        pid_file="/p",
        max_payload=8 << 20,
        credentials=creds,
        run_ids=["r1"],
        max_file_store=64 << 20,
    )
    assert limited["jetstream"] == {"store_dir": "/s", "max_file_store": 67108864}
    users = {u["user"]: u for u in rendered["authorization"]["users"]}
    assert set(users) == set(ROLES)
    assert users["actor"]["permissions"] == role_permissions("actor", ["r1"]).as_server_config()


def test_credentials_file_is_private_and_round_trips(tmp_path) -> None:
    cred = RoleCredentials(
        role="actor", user="actor", password="s3cret", servers=["nats://h:1"], inbox_prefix="_INBOX_actor"
    )
    path = tmp_path / "credentials" / "actor.json"
    cred.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert RoleCredentials.read(path) == cred


def test_run_layout_uses_work_queue_for_work_and_routes_advisories_to_the_dlq() -> None:
    s = Subjects("r1")
    limits = StreamLimits(ack_wait_s=7.0, max_deliver=4)
    layout = run_layout(s, limits)
    streams = {c.name: c for c in layout.streams}
    assert streams[s.work_stream].retention == api.RetentionPolicy.WORK_QUEUE
    assert streams[s.work_stream].subjects == [s.work_shared, f"{s.prefix}.work.actor.*"]
    assert all(c.storage == api.StorageType.FILE for c in layout.streams)
    dlq = streams[s.dead_letter_stream].subjects
    assert dlq[0] == s.dead_letter
    assert {f"{MAX_DELIVERIES_ADVISORY}.{n}.*" for n in (s.nodes_stream, s.work_stream, s.trees_stream)} == set(dlq[1:])
    durables = {c.durable_name: (stream, c) for stream, c in layout.consumers}
    assert durables[s.allocator_consumer][0] == s.nodes_stream
    assert durables[s.learner_consumer][1].filter_subject == s.trees
    # The learner holds trees until a checkpoint has them: no cap may stop their delivery.
    assert durables[s.learner_consumer][1].max_ack_pending == -1
    assert durables[s.allocator_consumer][1].max_ack_pending is None
    assert durables[s.shared_work_consumer][1].ack_wait == 7.0
    assert durables[s.shared_work_consumer][1].max_deliver == 4
    own = actor_consumer_config(s, "a7", limits)
    assert (own.durable_name, own.filter_subject) == ("actor_a7", s.work_for_actor("a7"))


def test_bus_server_config_validates_and_loads(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"field max_payload = 100: Expected `int` >= 1048576$"):
        load_config(BusServerConfig, None, ["max_payload=100"])
    with pytest.raises(ValueError, match="run id"):
        BusServerConfig(run=RunConfig(run_id="a.b"))
    with pytest.raises(ConfigError, match=r"field streams\.max_deliver = 0: Expected `int` >= 1"):
        load_config(BusServerConfig, None, ["streams.max_deliver=0"])
    with pytest.raises(ConfigError, match=r"field max_store_mib = -1: Expected `int` >= 0"):
        load_config(BusServerConfig, None, ["max_store_mib=-1"])
    # The default caps (1.5 GiB and more) are reserved from a store limit they do not fit in.
    with pytest.raises(ValueError, match="must leave room within max_store_mib=64"):
        BusServerConfig(max_store_mib=64)
    config = load_config(BusServerConfig, None, ["run.run_dir=/tmp/x", "streams.ack_wait_s=3", "port=5000"])
    assert config.store_path.as_posix() == "/tmp/x/nats"
    assert config.streams.ack_wait_s == 3.0 and config.port == 5000
    with pytest.raises(ConfigError):
        load_config(BusServerConfig, None, ["port=many"])


def test_an_actors_own_credential_allows_only_its_own_subjects() -> None:
    s = Subjects("r1")
    own = role_permissions("actor", ["r1"], actor_id="a1")
    publish = set(own.publish)
    assert s.nodes_from("a1") in publish and s.dead_letter in publish
    # Its own node subjects for allocator shard 0 and for the other shards, no one else's.
    own_nodes = {p for p in publish if p.startswith(f"{s.prefix}.nodes.")}
    assert own_nodes == {s.nodes_from("a1"), f"{s.nodes_from('a1')}.*"}
    assert f"$KV.{s.state_bucket}.{Subjects.actor_key('a1')}" in publish
    assert not any(p.startswith(f"$KV.{s.state_bucket}.") and p.endswith("*") for p in publish)
    creates = [p for p in publish if p.startswith(f"$JS.API.CONSUMER.CREATE.{s.work_stream}")]
    assert creates == [f"$JS.API.CONSUMER.CREATE.{s.work_stream}.actor_a1.{s.work_for_actor('a1')}"]
    pulled = {p.rsplit(".", 1)[1] for p in publish if p.startswith(f"$JS.API.CONSUMER.MSG.NEXT.{s.work_stream}.")}
    assert pulled == {"actor_a1", s.shared_work_consumer}
    # Its replies land in an inbox no other actor (or the shared actor user) may read.
    assert own.subscribe == (f"{inbox_prefix('actor', 'a1')}.>", s.weights_announce)
    assert inbox_prefix("actor", "a1") != inbox_prefix("actor", "a2") != inbox_prefix("actor")
    # The shared actor credential stands for any actor.
    assert s.nodes in role_permissions("actor", ["r1"]).publish
    with pytest.raises(ValueError, match="only actors"):
        role_permissions("allocator", ["r1"], actor_id="a1")


def test_the_node_subject_names_its_sender() -> None:
    s = Subjects("r1")
    assert s.nodes_from("a-1") == "tracerl.r1.nodes.a-1" and s.nodes == "tracerl.r1.nodes.*"
    assert s.sender_of_node("tracerl.r1.nodes.a-1") == "a-1"
    assert s.sender_of_node("tracerl.r2.nodes.a-1") is None
    assert s.sender_of_node("tracerl.r1.nodes") is None
    assert s.sender_of_node("tracerl.r1.trees.a-1") is None
    with pytest.raises(ValueError):
        s.nodes_from("a.b")


def test_node_subjects_name_the_allocator_shard_and_shard_zero_keeps_the_single_allocators() -> None:
    s = Subjects("r1")
    assert s.nodes_from("a-1", 0) == s.nodes_from("a-1") == "tracerl.r1.nodes.a-1"
    assert s.nodes_from("a-1", 2) == "tracerl.r1.nodes.a-1.2"
    assert s.node_subject_parts("tracerl.r1.nodes.a-1.2") == ("a-1", 2)
    assert s.node_subject_parts("tracerl.r1.nodes.a-1") == ("a-1", 0)
    assert s.sender_of_node("tracerl.r1.nodes.a-1.2") == "a-1"
    # Shard 0 is never spelled out, and a shard is a plain decimal: one subject per (actor, shard).
    for bad in (
        "tracerl.r1.nodes.a-1.0",
        "tracerl.r1.nodes.a-1.01",
        "tracerl.r1.nodes.a-1.x",
        "tracerl.r1.nodes.a.1.2",
    ):
        assert s.node_subject_parts(bad) is None, bad
    assert s.nodes_for_shard(0) == s.nodes and s.nodes_for_shard(3) == "tracerl.r1.nodes.*.3"
    assert s.allocator_shard_consumer(0) == s.allocator_consumer == "allocator"
    assert s.allocator_shard_consumer(1) == "allocator_shard1"
    with pytest.raises(ValueError):
        s.nodes_from("a1", -1)
    layout = run_layout(s, StreamLimits())
    nodes_stream = next(c for c in layout.streams if c.name == s.nodes_stream)
    assert nodes_stream.subjects == [s.nodes, s.sharded_nodes]


def test_allocator_shards_may_create_and_pull_their_own_nodes_durables_only() -> None:
    s = Subjects("r1")
    publish = set(role_permissions("allocator", ["r1"]).publish)
    creates = {p for p in publish if p.startswith(f"$JS.API.CONSUMER.CREATE.{s.nodes_stream}.")}
    # Named creates only with a shard's filter (the unnamed create is the replay's ordered consumer).
    assert creates == {f"$JS.API.CONSUMER.CREATE.{s.nodes_stream}.*.{s.sharded_nodes}"}
    assert f"$JS.API.CONSUMER.MSG.NEXT.{s.nodes_stream}.*" in publish
    assert not any(p.startswith(f"$JS.API.CONSUMER.CREATE.{s.work_stream}") for p in publish)
    actor = set(role_permissions("actor", ["r1"]).publish)
    assert {s.nodes, s.sharded_nodes} <= actor


def test_tls_and_per_actor_credentials_are_the_default_beyond_loopback() -> None:
    local = BusServerConfig()
    assert not local.tls_enabled and local.shared_actor_enabled
    wide = BusServerConfig(host="0.0.0.0")
    assert wide.tls_enabled and not wide.shared_actor_enabled
    assert BusServerConfig(host="10.0.0.5", tls=False).tls_enabled is False
    assert BusServerConfig(host="::1").tls_enabled is False
    assert BusServerConfig(host="localhost").tls_enabled is False
    # A route beyond loopback carries the cluster's traffic to other hosts too.
    routed = load_config(
        BusServerConfig,
        overrides=[
            "cluster.name=c",
            "cluster.node_name=n1",
            "cluster.route_host=10.0.0.5",
            "cluster.routes=[nats-route://10.0.0.6:6222]",
        ],
    )
    assert routed.tls_enabled and not routed.shared_actor_enabled
    with pytest.raises(ConfigError, match="actors"):
        load_config(BusServerConfig, overrides=["actors=[a.b]"])


def test_server_config_with_tls_and_an_actors_own_user() -> None:
    from bus.server import NodePlan, TlsFiles, actor_credentials, shared_roles

    counter = itertools.count()
    creds = generate_credentials(["tls://h:1"], lambda: f"pw{next(counter)}", roles=shared_roles(False))
    assert "actor" not in creds
    own = actor_credentials("a1", "pwa", ["tls://h:1"], "CA")
    files = TlsFiles(cert_file="/c.pem", key_file="/k.pem", ca_file="/ca.pem")
    node = NodePlan(
        name="n1",
        host="10.0.0.5",
        port=4222,
        monitor_port=8222,
        file_stem="x",
        store_dir="/s",
        cluster_name="c",
        route_host="10.0.0.5",
        route_port=6222,
        routes=("nats-route://10.0.0.6:6222",),
        tls=True,
    )
    from bus.server import RouteCredentials

    rendered = render_server_config(
        host="10.0.0.5",
        port=4222,
        monitor_port=8222,
        store_dir="/s",
        pid_file="/p",
        max_payload=8 << 20,
        credentials=creds,
        run_ids=["r1"],
        node=node,
        route_credentials=RouteCredentials("route", "rp"),
        actors={"a1": own},
        tls_files=files,
    )
    users = {u["user"]: u for u in rendered["authorization"]["users"]}
    assert set(users) == {"admin", "allocator", "learner", "actor-a1"}
    assert users["actor-a1"]["permissions"] == role_permissions("actor", ["r1"], "a1").as_server_config()
    assert rendered["tls"] == {"cert_file": "/c.pem", "key_file": "/k.pem", "timeout": 5}
    assert rendered["cluster"]["tls"]["verify"] is True and rendered["cluster"]["tls"]["ca_file"] == "/ca.pem"
    assert node.url == "tls://10.0.0.5:4222"
    assert own.inbox_prefix == inbox_prefix("actor", "a1") and own.user == "actor-a1"


def test_with_user_adds_or_replaces_one_user_and_keeps_the_rest() -> None:
    from bus.server import with_user

    rendered = {"port": 1, "authorization": {"users": [{"user": "admin"}, {"user": "actor-a1", "password": "old"}]}}
    replaced = with_user(rendered, {"user": "actor-a1", "password": "new"})
    assert replaced["authorization"]["users"] == [{"user": "admin"}, {"user": "actor-a1", "password": "new"}]
    added = with_user(rendered, {"user": "actor-a2"})
    assert [u["user"] for u in added["authorization"]["users"]] == ["admin", "actor-a1", "actor-a2"]
    assert rendered["authorization"]["users"][1]["password"] == "old" and added["port"] == 1


def test_server_certificate_names_every_address_and_chains_to_the_run_ca() -> None:
    import datetime

    from cryptography import x509

    from bus import tls

    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    ca = tls.generate_ca("r1", now)
    hosts = tls.certificate_hosts("0.0.0.0", "10.0.0.5", ["bus.example"], ["myhost"])
    assert hosts == ["0.0.0.0", "10.0.0.5", "bus.example", "127.0.0.1", "localhost", "myhost"]
    issued = tls.issue_server_cert(ca, hosts, now)
    cert = x509.load_pem_x509_certificate(issued.cert_pem.encode())
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    cert.verify_directly_issued_by(ca_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"0.0.0.0", "10.0.0.5", "127.0.0.1"}
    assert set(san.get_values_for_type(x509.DNSName)) == {"bus.example", "localhost", "myhost"}
    assert cert.not_valid_before_utc == now - tls.CLOCK_SKEW
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    with pytest.raises(ValueError):
        tls.issue_server_cert(ca, [], now)


def test_nodes_trees_and_dead_letters_are_capped_in_bytes_and_trees_outlive_their_nodes() -> None:
    limits = StreamLimits(nodes_max_bytes=100, trees_max_bytes=200, dead_letter_max_bytes=50)
    s = Subjects("r1")
    caps = {c.name: c.max_bytes for c in run_layout(s, limits).streams}
    assert caps == {s.nodes_stream: 100, s.work_stream: None, s.trees_stream: 200, s.dead_letter_stream: 50}
    uncapped = StreamLimits(nodes_max_bytes=0, trees_max_bytes=0, dead_letter_max_bytes=0)
    assert {c.max_bytes for c in run_layout(s, uncapped).streams} == {-1, None}
    for nodes, trees in ((100, 199), (0, 200)):
        with pytest.raises(ValueError, match="trees must outlive their nodes"):
            StreamLimits(nodes_max_bytes=nodes, trees_max_bytes=trees)
    with pytest.raises(ConfigError, match=r"field dead_letter_max_bytes = -1: Expected `int` >= 0"):
        load_config(StreamLimits, None, ["dead_letter_max_bytes=-1"])
