"""Pure parts of clustering: config checks, node plans, rendered server configs, readiness."""

from __future__ import annotations

import itertools

import pytest

from bus.config import BusServerConfig, ClusterConfig, StreamLimits
from bus.provision import run_layout
from bus.server import (
    RouteCredentials,
    generate_credentials,
    jetstream_cluster_ready,
    plan_nodes,
    render_server_config,
    route_url_with_credentials,
)
from protocol import Subjects
from tracerl.config import ConfigError, RunConfig, load_config, override_args

ROUTE = RouteCredentials(user="route", password="pw-route")


def _ports() -> itertools.count:
    return itertools.count(40000)


def test_local_cluster_plans_three_routed_nodes_on_consecutive_ports() -> None:
    config = BusServerConfig(run=RunConfig(run_dir="/r"), cluster=ClusterConfig(name="c", local_nodes=3))
    nodes = plan_nodes(config, lambda host: pytest.fail("no free port needed when ports are configured"))
    assert [n.name for n in nodes] == ["c-n0", "c-n1", "c-n2"]
    assert [(n.port, n.monitor_port, n.route_port) for n in nodes] == [
        (4222, 8222, 6222),
        (4223, 8223, 6223),
        (4224, 8224, 6224),
    ]
    assert [n.store_dir for n in nodes] == ["/r/nats/c-n0", "/r/nats/c-n1", "/r/nats/c-n2"]
    assert nodes[0].routes == ("nats-route://127.0.0.1:6223", "nats-route://127.0.0.1:6224")
    assert nodes[2].routes == ("nats-route://127.0.0.1:6222", "nats-route://127.0.0.1:6223")
    assert len({n.file_stem for n in nodes}) == 3


def test_zero_ports_take_free_ones_and_a_wildcard_host_routes_over_loopback() -> None:
    config = BusServerConfig(
        host="0.0.0.0", port=0, monitor_port=0, cluster=ClusterConfig(name="c", route_port=0, local_nodes=3)
    )
    ports = _ports()
    nodes = plan_nodes(config, lambda host: next(ports))
    all_ports = [p for n in nodes for p in (n.port, n.monitor_port, n.route_port)]
    assert len(set(all_ports)) == 9
    assert all(route.startswith("nats-route://127.0.0.1:") for n in nodes for route in n.routes)


def test_unclustered_plan_keeps_the_single_server_file_names() -> None:
    config = BusServerConfig(run=RunConfig(run_dir="/r"))
    (node,) = plan_nodes(config, lambda host: 1)
    assert (node.name, node.file_stem, node.store_dir, node.routes) == ("", "nats-server", "/r/nats", ())


def test_a_node_of_a_multi_host_cluster_listens_on_its_address_and_routes_to_its_peers() -> None:
    peers = ["nats-route://10.0.0.2:6222", "nats-route://10.0.0.3:6222"]
    config = BusServerConfig(host="10.0.0.1", cluster=ClusterConfig(name="c", node_name="h1", routes=peers))
    (node,) = plan_nodes(config, lambda host: 1)
    assert (node.name, node.route_host, node.route_port, node.routes) == ("h1", "10.0.0.1", 6222, tuple(peers))
    assert config.cluster.size == 3 and config.replicas == 3


def test_rendered_cluster_config_has_server_name_routes_and_route_auth() -> None:
    config = BusServerConfig(run=RunConfig(run_dir="/r"), cluster=ClusterConfig(name="c", local_nodes=3))
    nodes = plan_nodes(config, lambda host: 1)
    creds = generate_credentials(["nats://127.0.0.1:4222"], lambda: "pw")
    rendered = [
        render_server_config(
            host=n.host,
            port=n.port,
            monitor_port=n.monitor_port,
            store_dir=n.store_dir,
            pid_file="/p",
            max_payload=8 << 20,
            credentials=creds,
            run_ids=["r1"],
            node=n,
            route_credentials=ROUTE,
        )
        for n in nodes
    ]
    first = rendered[0]
    assert first["server_name"] == "c-n0"
    assert first["cluster"]["name"] == "c"
    assert first["cluster"]["listen"] == "127.0.0.1:6222"
    assert first["cluster"]["authorization"] == {"user": "route", "password": "pw-route"}
    assert first["cluster"]["routes"] == [
        "nats-route://route:pw-route@127.0.0.1:6223",
        "nats-route://route:pw-route@127.0.0.1:6224",
    ]
    # Clients may land on any node, so every node has the same users and permissions.
    assert all(r["authorization"] == first["authorization"] for r in rendered)
    with pytest.raises(ValueError, match="route credentials"):
        render_server_config(
            host="h",
            port=1,
            monitor_port=2,
            store_dir="/s",
            pid_file="/p",
            max_payload=8 << 20,
            credentials=creds,
            run_ids=["r1"],
            node=nodes[0],
        )


def test_unclustered_rendering_has_no_cluster_section() -> None:
    creds = generate_credentials(["nats://127.0.0.1:1"], lambda: "pw")
    (node,) = plan_nodes(BusServerConfig(), lambda host: 1)
    rendered = render_server_config(
        host="127.0.0.1",
        port=1,
        monitor_port=2,
        store_dir="/s",
        pid_file="/p",
        max_payload=8 << 20,
        credentials=creds,
        run_ids=["r1"],
        node=node,
    )
    assert "cluster" not in rendered and "server_name" not in rendered


def test_route_credentials_are_url_quoted() -> None:
    url = route_url_with_credentials("nats-route://h:6222", RouteCredentials(user="u", password="a@b:c/d"))
    assert url == "nats-route://u:a%40b%3Ac%2Fd@h:6222"


def test_replicas_default_to_three_on_a_cluster_and_one_alone() -> None:
    assert BusServerConfig().replicas == 1
    assert BusServerConfig().stream_limits.replicas == 1
    local = BusServerConfig(cluster=ClusterConfig(name="c", local_nodes=3))
    assert local.replicas == 3 and local.stream_limits.replicas == 3
    assert BusServerConfig(cluster=ClusterConfig(name="c", local_nodes=2)).replicas == 1
    pinned = BusServerConfig(streams=StreamLimits(replicas=1), cluster=ClusterConfig(name="c", local_nodes=3))
    assert pinned.replicas == 1
    layout = run_layout(Subjects("r1"), local.stream_limits)
    assert {s.num_replicas for s in layout.streams} == {3}
    assert {s.num_replicas for s in run_layout(Subjects("r1"), StreamLimits()).streams} == {1}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"streams": StreamLimits(replicas=3)}, "needs at least that many nodes"),
        ({"cluster": ClusterConfig(name="c", local_nodes=3), "streams": StreamLimits(replicas=5)}, "has 3"),
    ],
)
def test_bus_rejects_more_replicas_than_nodes(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BusServerConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a.b", "local_nodes": 3}, r"field name = 'a\.b': Expected `str` matching regex"),
        ({"routes": ["nats-route://h:1"], "node_name": "n"}, "cluster.name is required"),
        ({"name": "c"}, "needs cluster.routes"),
        ({"name": "c", "routes": ["nats-route://h:1"]}, "node_name"),
        ({"name": "c", "node_name": "n", "routes": ["nats://h:1"]}, "nats-route://"),
        ({"name": "c", "node_name": "n", "routes": ["nats-route://u:p@h:1"]}, "route credentials"),
        ({"name": "c", "local_nodes": 3, "join": True}, "excludes"),
        ({"name": "c", "local_nodes": -1}, r"field local_nodes = -1: Expected `int` >= 0"),
        (
            {"name": "c", "local_nodes": 3, "route_port": 70000},
            r"field route_port = 70000: Expected `int` <= 65535$",
        ),
    ],
)
def test_cluster_config_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(ClusterConfig, None, override_args(kwargs))
    with pytest.raises(ConfigError, match=r"field replicas = 7: Expected `int` <= 5$"):
        load_config(StreamLimits, None, ["replicas=7"])


def test_cluster_loads_from_command_line_overrides() -> None:
    config = load_config(
        BusServerConfig,
        None,
        [
            "cluster.name=trace",
            "cluster.node_name=h2",
            "cluster.join=true",
            "cluster.routes=[nats-route://10.0.0.1:6222,nats-route://10.0.0.3:6222]",
        ],
    )
    assert config.cluster.join and config.cluster.size == 3 and config.replicas == 3


def test_jetstream_readiness_needs_a_meta_leader_and_enough_reachable_servers() -> None:
    assert jetstream_cluster_ready({}, 1)
    assert not jetstream_cluster_ready({}, 3)
    peers = [{"name": "n1", "current": False}, {"name": "n2", "current": True}]
    assert jetstream_cluster_ready({"meta_cluster": {"leader": "n2", "replicas": peers}}, 3)
    assert not jetstream_cluster_ready({"meta_cluster": {"leader": "", "replicas": peers}}, 3)
    offline = [peers[0], {"name": "n2", "offline": True}]
    assert not jetstream_cluster_ready({"meta_cluster": {"leader": "n1", "replicas": offline}}, 3)
    assert jetstream_cluster_ready({"meta_cluster": {"leader": "n1", "replicas": offline}}, 2)


def test_a_joining_node_refuses_to_invent_credentials(tmp_path) -> None:
    from bus.server import BusServer, BusServerError

    config = BusServerConfig(
        run=RunConfig(run_dir=str(tmp_path)),
        cluster=ClusterConfig(name="c", node_name="h2", routes=["nats-route://10.0.0.1:6222"], join=True),
    )
    with pytest.raises(BusServerError, match="credentials of the first node"):
        BusServer(config)


def test_free_ports_are_picked_below_the_ephemeral_range(tmp_path):
    from bus.server import LISTEN_PORTS_LOW, ephemeral_port_range, free_port

    low, _ = ephemeral_port_range()
    ports = {free_port() for _ in range(20)}
    # Outgoing connections draw from the ephemeral range, so a port there can be taken before
    # nats-server binds it.
    assert all(LISTEN_PORTS_LOW <= port < low for port in ports)
    assert len(ports) > 1
    ranges = tmp_path / "ip_local_port_range"
    ranges.write_text("40000\t50000\n")
    assert ephemeral_port_range(str(ranges)) == (40000, 50000)
    ranges.write_text("garbage")
    assert ephemeral_port_range(str(ranges)) == (32768, 60999)
