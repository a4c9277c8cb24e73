"""Session-wide fixtures: a real nats-server and the tiny models, each built once per session."""

pytest_plugins = ["tests.fixtures.nats", "tests.fixtures.models"]
