"""The bus's nats-server runs under a soft memory limit, and weights versions leave no memory behind."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from bench.bus_memory import MemoryCurve, measure_curve, summarise_curve
from bus.config import MIB, BusServerConfig
from bus.server import BusServer, free_port, generate_credentials, render_server_config, server_environment
from tracerl.config import LogConfig, RunConfig


def test_the_memory_limit_is_set_for_nats_server_and_replaces_an_inherited_one() -> None:
    base = {"PATH": "/bin", "GOMEMLIMIT": "1GiB"}
    assert server_environment(base, 128) == {"PATH": "/bin", "GOMEMLIMIT": "128MiB"}
    assert base["GOMEMLIMIT"] == "1GiB"


def test_no_memory_limit_leaves_the_environment_as_it_is() -> None:
    assert server_environment({"PATH": "/bin"}, 0) == {"PATH": "/bin"}
    assert server_environment({"GOMEMLIMIT": "1GiB"}, 0) == {"GOMEMLIMIT": "1GiB"}


def _render(profile_port: int = 0) -> dict:
    return render_server_config(
        host="127.0.0.1",
        port=4222,
        monitor_port=8222,
        store_dir="/tmp/s",
        pid_file="/tmp/p",
        max_payload=8 * MIB,
        credentials=generate_credentials(["nats://127.0.0.1:4222"], lambda: "secret"),
        run_ids=["r"],
        profile_port=profile_port,
    )


def test_the_profiler_port_is_rendered_only_when_asked_for() -> None:
    assert "prof_port" not in _render()
    assert _render(profile_port=6060)["prof_port"] == 6060


def test_the_default_bus_has_a_memory_limit() -> None:
    assert BusServerConfig().memory_limit_mib == 128


def test_curve_summary_compares_the_first_and_last_fifth_after_the_warm_up() -> None:
    # 100 cycles sampled every 10, plus the last: the warm-up drops cycle 0, which leaves 10
    # samples (cycles 10..90 and 99), so each fifth is 2 of them.
    samples = [(c, (50 + c // 10) * MIB) for c in range(0, 100, 10)] + [(99, 60 * MIB)]
    summary = summarise_curve(MemoryCurve(0, MIB, 100, samples, 1.0))
    assert summary.early_mib == 51.5  # cycles 10 and 20: 51 and 52 MiB
    assert summary.late_mib == 59.5  # cycles 90 and 99: 59 and 60 MiB
    assert summary.peak_mib == 60.0
    assert summary.growth_mib == 8.0
    # Over (90 + 99) / 2 - (10 + 20) / 2 = 79.5 cycles.
    assert summary.growth_per_1000_cycles_mib == 100.6


def test_a_curve_with_too_few_samples_is_refused() -> None:
    with pytest.raises(ValueError, match="too few"):
        summarise_curve(MemoryCurve(0, MIB, 100, [(0, MIB), (50, MIB), (99, MIB)], 1.0))


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().split("=", 1) for entry in raw if b"=" in entry)


@pytest.mark.nats
def test_the_bus_starts_nats_server_with_its_memory_limit_and_profiler(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    profile_port = free_port()

    def server_config(directory: str, **memory) -> BusServerConfig:
        run = RunConfig(run_id="memlimit", run_dir=str(tmp_path / directory))
        return BusServerConfig(
            run=run, log=LogConfig(level="warning", json_file=False), port=0, monitor_port=0, **memory
        )

    with BusServer(server_config("limited", memory_limit_mib=96, profile_port=profile_port)) as server:
        assert server.pid is not None
        assert _environ(server.pid)["GOMEMLIMIT"] == "96MiB"
        with urllib.request.urlopen(f"http://127.0.0.1:{profile_port}/debug/pprof/heap?debug=1", timeout=5) as resp:
            assert b"# HeapAlloc = " in resp.read()
    with BusServer(server_config("unlimited", memory_limit_mib=0)) as server:
        assert server.pid is not None
        assert "GOMEMLIMIT" not in _environ(server.pid)
        with urllib.request.urlopen(f"{server.monitor_url}/varz", timeout=5) as resp:
            assert json.load(resp)["mem"] > 0


@pytest.mark.nats
def test_weights_versions_leave_the_bus_memory_bounded(tmp_path: Path) -> None:
    """Put, read back and retire 150 versions of 1 MiB: a deleted version whose chunks or delete
    marker stayed in the store would pin its block's cache, about 1 MiB per cycle."""
    limit_mib = 48
    summary = summarise_curve(measure_curve(tmp_path, limit_mib, cycles=150, object_bytes=MIB))
    assert summary.growth_per_1000_cycles_mib < 300, summary
    # The soft limit covers the Go heap, not the whole process: allow for the rest.
    assert summary.late_mib < limit_mib + 32, summary
