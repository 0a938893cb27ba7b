"""The features database of the routeguide demo, and the geometry over it.

Pure code: no gRPC here. Locations are E7 degrees (degrees times 10^7) as
in the routeguide proto; distances are metres on a spherical Earth.

    db = load_db()                      # the db that ships with the package
    db.at(407033000, -740550000)        # Place(name="Liberty State Park, ...")
    db.within(lo=(40_0000000, -75_0000000), hi=(41_0000000, -74_0000000))
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

COORD_FACTOR = 1e7
EARTH_RADIUS_M = 6_371_000.0
DB_RESOURCE = "route_guide_db.json"

LatLng = tuple[int, int]


@dataclass(frozen=True, slots=True)
class Place:
    name: str
    latitude: int
    longitude: int

    @property
    def location(self) -> LatLng:
        return (self.latitude, self.longitude)


def haversine_m(a: LatLng, b: LatLng) -> float:
    """The great-circle distance in metres between two E7 locations."""
    lat1, lat2 = math.radians(a[0] / COORD_FACTOR), math.radians(b[0] / COORD_FACTOR)
    dlat = lat2 - lat1
    dlon = math.radians((b[1] - a[1]) / COORD_FACTOR)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def in_rectangle(point: LatLng, lo: LatLng, hi: LatLng) -> bool:
    """Whether point lies inside the rectangle with corners lo and hi (edges
    included). The corners may be given in any order."""
    lat_min, lat_max = sorted((lo[0], hi[0]))
    lon_min, lon_max = sorted((lo[1], hi[1]))
    return lat_min <= point[0] <= lat_max and lon_min <= point[1] <= lon_max


class FeatureDb:
    """Named places, looked up by exact location or by rectangle."""

    def __init__(self, places: Iterable[Place]) -> None:
        self.places: tuple[Place, ...] = tuple(places)
        self._by_location = {p.location: p for p in self.places}

    def __len__(self) -> int:
        return len(self.places)

    def __iter__(self) -> Iterator[Place]:
        return iter(self.places)

    def at(self, location: LatLng) -> Place | None:
        """The place at exactly this location, or None."""
        return self._by_location.get(location)

    def within(self, lo: LatLng, hi: LatLng) -> list[Place]:
        """The places inside a rectangle, in db order."""
        return [p for p in self.places if in_rectangle(p.location, lo, hi)]


def parse_db(text: str, source: str = "features db") -> FeatureDb:
    """Parses the routeguide JSON format:
    [{"name": "...", "location": {"latitude": E7, "longitude": E7}}, ...]"""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise ValueError(f"{source} must be a JSON list of features, not {type(raw).__name__}")
    places = []
    for i, item in enumerate(raw):
        try:
            loc = item["location"]
            lat, lon = int(loc["latitude"]), int(loc["longitude"])
            name = str(item.get("name", ""))
        except (KeyError, TypeError, ValueError, AttributeError):
            raise ValueError(
                f"{source}: feature #{i} must look like "
                '{"name": "...", "location": {"latitude": E7, "longitude": E7}}'
            ) from None
        if not (-900_000_000 <= lat <= 900_000_000 and -1_800_000_000 <= lon <= 1_800_000_000):
            raise ValueError(f"{source}: feature #{i} ({name!r}) has a location out of range")
        places.append(Place(name, lat, lon))
    return FeatureDb(places)


def load_db(path: str | Path | None = None) -> FeatureDb:
    """The db at path, or the one shipped with the package."""
    if path is None:
        text = resources.files(__package__).joinpath(DB_RESOURCE).read_text(encoding="utf-8")
        return parse_db(text, DB_RESOURCE)
    return parse_db(Path(path).read_text(encoding="utf-8"), str(path))
