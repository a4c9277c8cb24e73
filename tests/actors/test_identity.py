"""Which id an actor runs as when it has a credential of its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from actors.config import ActorConfig
from actors.service import identity
from bus.server import actor_credentials, generate_credentials
from tracerl.config import BusConfig


def test_an_actor_takes_its_id_from_its_own_credentials_file(tmp_path: Path) -> None:
    own = tmp_path / "exp1-actor-a9.json"
    actor_credentials("a9", "pw", ["tls://10.0.0.1:4222"], "CA").write(own)
    config = ActorConfig(bus=BusConfig(credentials=str(own)))
    assert identity(config) == "a9"
    # A configured id is kept (and the client refuses a file of another actor's).
    assert identity(dataclasses.replace(config, actor_id="a1")) == "a1"
    # The shared credential names no actor: a fresh id, as without any file.
    shared = tmp_path / "actor.json"
    generate_credentials(["nats://127.0.0.1:4222"], lambda: "pw")["actor"].write(shared)
    fresh = identity(ActorConfig(bus=BusConfig(credentials=str(shared))))
    assert fresh.startswith("actor-") and fresh != identity(ActorConfig())
