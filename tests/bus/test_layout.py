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
    with pytest.raises(ValueError, match="max_payload"):
        BusServerConfig(max_payload=100)
    with pytest.raises(ValueError, match="run id"):
        BusServerConfig(run=RunConfig(run_id="a.b"))
    with pytest.raises(ValueError, match="max_deliver"):
        StreamLimits(max_deliver=0)
    with pytest.raises(ValueError, match="max_store_mib"):
        BusServerConfig(max_store_mib=-1)
    config = load_config(BusServerConfig, None, ["run.run_dir=/tmp/x", "streams.ack_wait_s=3", "port=5000"])
    assert config.store_path.as_posix() == "/tmp/x/nats"
    assert config.streams.ack_wait_s == 3.0 and config.port == 5000
    with pytest.raises(ConfigError):
        load_config(BusServerConfig, None, ["port=many"])
