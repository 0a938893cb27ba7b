"""docs/state-machine.md shows the table the code runs."""

from __future__ import annotations

from pathlib import Path

from lookaside_registry import machine

DOC = Path(__file__).resolve().parents[2] / "docs" / "state-machine.md"


def test_the_doc_shows_the_table_in_the_code() -> None:
    assert machine.markdown_table() in DOC.read_text(encoding="utf-8"), (
        "docs/state-machine.md is stale: paste lookaside_registry.machine.markdown_table() into it"
    )


def test_every_event_has_a_row_for_every_state_it_accepts() -> None:
    for event, rule in machine.TABLE.items():
        assert rule.rows, event
        for frm, to in rule.rows.items():
            assert isinstance(frm, machine.Key) and isinstance(to, machine.Key)
        if rule.actor is machine.Actor.SELF and event is not machine.Event.REGISTER:
            assert machine.Key.ABSENT not in rule.rows  # a lease needs a record
