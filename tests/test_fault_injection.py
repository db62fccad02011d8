"""Kill any actor, lose nothing: the fault-injection suite (see tests/chaos.py).

Each scenario runs a load of mixed signals through the real multi-process service while
faults are injected at points chosen by a seed, then checks the eight invariants. The seed is
printed; EXEC_CHAOS_SEED replays a run. The summary table is printed at the end. A longer
soak runs from the same code: ``.venv/bin/python tests/chaos.py --soak``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from chaos import (
    OUTCOMES,
    KafkaOutage,
    Outcome,
    run_instances_scenario,
    run_scenario,
    scenarios,
    summary,
)

SEED = int(os.environ.get("EXEC_CHAOS_SEED") or random.SystemRandom().randrange(1 << 30))
SIGNALS = int(os.environ.get("EXEC_CHAOS_SIGNALS", "120"))
KAFKA_OUTAGE_S = 30.0


@pytest.fixture(scope="module")
def outcomes() -> list[Outcome]:
    """Collected for the summary table that conftest prints at the end of the run."""
    OUTCOMES.clear()
    return OUTCOMES


def summary_for_terminal() -> list[str]:
    if not OUTCOMES:
        return []
    return [f"fault injection, seed {SEED} (replay with EXEC_CHAOS_SEED={SEED}):", *summary(OUTCOMES).splitlines()]


@pytest.mark.parametrize("name", list(scenarios()))
def test_nothing_is_lost_or_duplicated_when(
    name: str, tmp_path: Path, kafka_bootstrap: str, outcomes: list[Outcome]
) -> None:
    outcome = run_scenario(name, tmp_path, kafka_bootstrap, SEED, scenarios()[name], SIGNALS)
    outcomes.append(outcome)
    assert outcome.passed, f"seed {SEED}: {outcome.invariants}"


def test_nothing_is_lost_or_duplicated_when_kafka_is_down_for_30s(tmp_path: Path, outcomes: list[Outcome]) -> None:
    kafka = KafkaOutage(tmp_path / "kafka", KAFKA_OUTAGE_S)
    try:
        outcome = run_scenario("kafka_outage", tmp_path / "service", kafka.bootstrap, SEED, [kafka], SIGNALS)
    finally:
        kafka.stop()
    outcomes.append(outcome)
    assert outcome.passed, f"seed {SEED}: {outcome.invariants}"


def test_nothing_is_lost_or_duplicated_when_instances_sharing_the_work_die(
    tmp_path: Path, kafka_bootstrap: str, outcomes: list[Outcome]
) -> None:
    """Three instances, three partitions, a steady load: one SIGKILLed, then a second, then both
    started again (chaos.run_instances_scenario)."""
    outcome = run_instances_scenario(tmp_path, kafka_bootstrap, SEED)
    outcomes.append(outcome)
    assert outcome.passed, f"seed {SEED}: {outcome.invariants}"
