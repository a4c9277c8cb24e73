"""Role programs the multi-host test runs inside network namespaces (``python -m tests.bus.multihost_roles``).

Each one connects like a role process on another host would: only ``bus.servers`` and
the role's own copied credentials file. The result is one JSON line on stdout.

``trainer``  the learner's host: as ``learner`` puts a weights object and announces it, as
             ``allocator`` issues a WorkItem, then waits for the actor's TurnNode.
``actor``    an actor host with its own credential (``actor-<id>.json``): is refused
             without credentials, and with them but without the run's CA; then pulls the
             WorkItem, downloads and checks the weights, publishes a TurnNode for it on its
             own subject, and is refused publishing one as another actor.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import ssl
import sys
import time
from pathlib import Path

import nats
import nats.errors

from bus.client import BusClient, Delivery
from bus.server import RoleCredentials
from protocol import TurnNode, WeightsAnnouncement, WorkItem
from protocol.messages import replace
from tests.protocol.strategies import realistic_turn_node, sample_messages
from tracerl.config import BusConfig, RunConfig

WEIGHTS_OBJECT = "policy-1"
DEADLINE_S = 30.0


def weights_bytes() -> bytes:
    # 3 MiB and not one repeated chunk, so a reassembly mistake changes the digest.
    return b"".join(hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(3 * 32768))


async def connect(role: str, servers: list[str], credentials_dir: Path, run_id: str, file_name: str = "") -> BusClient:
    bus = BusConfig(
        servers=servers,
        credentials=str(credentials_dir / (file_name or f"{role}.json")),
        connect_timeout_s=3.0,
        max_reconnect_attempts=2,
        reconnect_wait_s=0.2,
        request_timeout_s=5.0,
    )
    return await BusClient.connect(role, bus, RunConfig(run_id=run_id, run_dir=str(credentials_dir)))


async def first_message(client: BusClient, stream: str, durable: str, expected: type) -> object:
    consumer = await client.pull_consumer(stream, durable, expected)
    got: list = []

    async def keep(message: object, delivery: Delivery) -> None:
        got.append(message)

    deadline = time.monotonic() + DEADLINE_S
    try:
        while not got:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing on {stream} within {DEADLINE_S} s")
            await consumer.process_batch(keep, batch=1, timeout=0.5)
    finally:
        await consumer.close()
    return got[0]


async def trainer(servers: list[str], credentials_dir: Path, run_id: str) -> dict:
    weights = weights_bytes()
    async with (
        await connect("learner", servers, credentials_dir, run_id) as learner,
        await connect("allocator", servers, credentials_dir, run_id) as allocator,
    ):
        s = learner.subjects
        await learner.put_object(WEIGHTS_OBJECT, weights)
        await learner.announce_weights(
            WeightsAnnouncement(
                run_id=run_id,
                policy_version=1,
                object_name=WEIGHTS_OBJECT,
                sha256=hashlib.sha256(weights).hexdigest(),
                num_bytes=len(weights),
                format="safetensors",
                created_at=time.time(),
            )
        )
        work = next(m for m in sample_messages(run_id) if isinstance(m, WorkItem))
        await allocator.publish(s.work_shared, work, msg_id=work.work_id)
        node = await first_message(allocator, s.nodes_stream, s.allocator_consumer, TurnNode)
        assert isinstance(node, TurnNode)
        return {
            "work_id": work.work_id,
            "node_id": node.node_id,
            "node_actor": node.actor_id,
            "node_work_id": node.work_id,
            "node_policy_version": node.policy_version,
            "server": allocator.nc.connected_url.netloc,
        }


async def refused_without_ca(servers: list[str], own: RoleCredentials) -> str:
    """Connect with the right user and password but the system's CAs instead of the run's."""
    try:
        client = await nats.connect(
            servers=servers, user=own.user, password=own.password, allow_reconnect=False, connect_timeout=3.0
        )
    except (nats.errors.Error, OSError, ssl.SSLError) as err:
        return repr(err)
    await client.close()
    return ""


async def actor(servers: list[str], credentials_dir: Path, run_id: str) -> dict:
    try:
        anonymous = await nats.connect(
            servers=servers,
            allow_reconnect=False,
            connect_timeout=3.0,
            tls=ssl.create_default_context(cadata=_own_credentials(credentials_dir).ca_pem),
        )
    except (nats.errors.Error, OSError) as err:
        refused = str(err)
    else:
        await anonymous.close()
        refused = ""
    own = _own_credentials(credentials_dir)
    without_ca = await refused_without_ca(servers, own)
    async with await connect("actor", servers, credentials_dir, run_id, f"{own.user}.json") as client:
        s = client.subjects
        work = await first_message(client, s.work_stream, s.shared_work_consumer, WorkItem)
        assert isinstance(work, WorkItem)
        deadline = time.monotonic() + DEADLINE_S
        while (announcement := await client.get_weights_announcement()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("no weights announced")
            await asyncio.sleep(0.2)
        weights = await client.get_object(announcement.object_name)
        node = replace(
            realistic_turn_node(run_id, 0),
            work_id=work.work_id,
            tree_id=work.tree_id,
            policy_version=announcement.policy_version,
        )
        node = replace(node, actor_id=own.actor_id)
        await client.publish(s.nodes_from(own.actor_id), node, msg_id=node.node_id)
        other = f"{own.actor_id}-other"
        try:
            await client.publish(s.nodes_from(other), replace(node, actor_id=other), timeout=2.0)
            impostor = "accepted"
        except (TimeoutError, nats.errors.Error):
            impostor = repr(client.last_error)
        return {
            "refused": refused,
            "refused_without_ca": without_ca,
            "impostor": impostor,
            "actor_id": own.actor_id,
            "tls": bool(client.nc._server_info.get("tls_required")),
            "work_id": work.work_id,
            "weights_bytes": len(weights),
            "weights_ok": hashlib.sha256(weights).hexdigest() == announcement.sha256,
            "server": client.nc.connected_url.netloc,
        }


def _own_credentials(credentials_dir: Path) -> RoleCredentials:
    """The one actor credential copied to this host (``actor-<id>.json``)."""
    (path,) = credentials_dir.glob("actor-*.json")
    return RoleCredentials.read(path)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["trainer", "actor"])
    parser.add_argument("--servers", required=True, help="comma-separated NATS URLs")
    parser.add_argument("--credentials-dir", type=Path, required=True)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args()
    program = trainer if args.role == "trainer" else actor
    result = asyncio.run(program(args.servers.split(","), args.credentials_dir, args.run_id))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
