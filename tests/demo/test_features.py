"""The pure parts of the demo: the features db, geometry and the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from lookaside.demo.features import FeatureDb, Place, haversine_m, in_rectangle, load_db, parse_db
from lookaside.demo.report import (
    NO_SERVER,
    CallResult,
    Tally,
    format_line,
    parse_summary,
    summary_table,
)


def test_shipped_db_has_about_100_distinct_named_places_in_nj_ny() -> None:
    db = load_db()
    assert 90 <= len(db) <= 120
    assert len({p.location for p in db}) == len(db)
    assert len({p.name for p in db}) == len(db)
    for p in db:
        assert p.name.endswith(("NJ, USA", "NY, USA")), p
        # E7 degrees, in the New Jersey / New York area
        assert 390_000_000 < p.latitude < 420_000_000, p
        assert -760_000_000 < p.longitude < -730_000_000, p


def test_shipped_db_is_package_data() -> None:
    import lookaside.demo

    path = Path(lookaside.demo.__file__).with_name("route_guide_db.json")
    assert len(load_db(path)) == len(load_db())
    assert len(json.loads(path.read_text())) == len(load_db())


def test_lookup_by_location() -> None:
    db = FeatureDb([Place("a", 1, 2), Place("b", 3, 4)])
    assert db.at((3, 4)) == Place("b", 3, 4)
    assert db.at((3, 5)) is None


def test_haversine_known_distances() -> None:
    # One degree of latitude on a 6371 km sphere is 6371000 * pi / 180 m.
    one_degree = 6_371_000 * math.pi / 180
    a, b = (400_000_000, -740_000_000), (410_000_000, -740_000_000)
    assert haversine_m(a, b) == pytest.approx(one_degree, rel=1e-9)
    assert haversine_m(b, a) == pytest.approx(one_degree, rel=1e-9)
    assert haversine_m(a, a) == 0
    # Along the equator, longitude degrees are as long as latitude degrees.
    assert haversine_m((0, 0), (0, 10_000_000)) == pytest.approx(one_degree, rel=1e-9)
    # At 60 degrees north, half as long.
    assert haversine_m((600_000_000, 0), (600_000_000, 10_000_000)) == pytest.approx(
        one_degree / 2, rel=1e-3
    )


def test_rectangle_edges_and_corner_order() -> None:
    lo, hi = (10, 20), (30, 40)
    assert in_rectangle((10, 20), lo, hi) and in_rectangle((30, 40), lo, hi)
    assert in_rectangle((20, 30), hi, lo)  # corners given the other way round
    assert in_rectangle((20, 30), (10, 40), (30, 20))
    assert not in_rectangle((9, 30), lo, hi)
    assert not in_rectangle((20, 41), lo, hi)


def test_within_matches_brute_force() -> None:
    db = load_db()
    lo, hi = (405_000_000, -745_000_000), (410_000_000, -740_000_000)
    expected = [
        p.name
        for p in db
        if 405_000_000 <= p.latitude <= 410_000_000 and -745_000_000 <= p.longitude <= -740_000_000
    ]
    assert expected, "the rectangle should hold some places"
    assert [p.name for p in db.within(lo, hi)] == expected
    assert db.within((0, 0), (1, 1)) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ('{"a": 1}', "must be a JSON list"),
        ('[{"name": "x"}]', "feature #0 must look like"),
        ('[{"name": "x", "location": {"latitude": 1000000000, "longitude": 0}}]', "out of range"),
    ],
)
def test_parse_db_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_db(text)


def test_call_lines_in_the_shape_of_the_article() -> None:
    ok = CallResult("GetFeature", "host:8081", "OK", 'name: "Nassau Hall"')
    err = CallResult("GetFeature", "host:8082", "UNAVAILABLE", "injected fault")
    lost = CallResult("ListFeatures", "", "DEADLINE_EXCEEDED", "Deadline Exceeded")
    assert format_line(ok) == '[GetFeature] (resp) (server=host:8081) name: "Nassau Hall"'
    assert format_line(err) == "[GetFeature] (error) (server=host:8082) UNAVAILABLE: injected fault"
    assert format_line(lost) == (
        f"[ListFeatures] (error) (server={NO_SERVER}) DEADLINE_EXCEEDED: Deadline Exceeded"
    )


def test_summary_counts_calls_per_server_and_errors_per_code() -> None:
    tally = Tally()
    for _ in range(3):
        tally.add(CallResult("GetFeature", "b:2", "OK", ""))
    tally.add(CallResult("GetFeature", "a:1", "OK", ""))
    tally.add(CallResult("GetFeature", "a:1", "UNAVAILABLE", "injected fault"))
    tally.add(CallResult("GetFeature", NO_SERVER, "UNAVAILABLE", "no list"))
    tally.add(CallResult("RouteChat", "b:2", "DEADLINE_EXCEEDED", ""))
    table = summary_table(tally)
    lines = table.splitlines()
    # Sorted by server, NO_SERVER last, then the total.
    assert [line.split()[0] for line in lines[2:6]] == ["a:1", "b:2", NO_SERVER, "total"]
    assert lines[2].split() == ["a:1", "2", "1", "1"]
    assert lines[3].split() == ["b:2", "4", "3", "1"]
    assert lines[5].split() == ["total", "7", "4", "3"]
    assert parse_summary("noise\n" + table + "\nmore noise") == (
        {"a:1": 2, "b:2": 4, NO_SERVER: 1},
        {"UNAVAILABLE": 2, "DEADLINE_EXCEEDED": 1},
    )
    assert tally.total == 7 and tally.errors == 3


def test_summary_without_errors() -> None:
    tally = Tally()
    tally.add(CallResult("GetFeature", "a:1", "OK", ""))
    table = summary_table(tally)
    assert "(none)" in table
    assert parse_summary(table) == ({"a:1": 1}, {})
