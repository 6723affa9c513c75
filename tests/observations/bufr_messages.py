"""BUFR messages encoded with ecCodes for the tests of the BUFR reader: SYNOP, SHIP, TEMP and
aircraft reports with known values, compressed or not, one or several subsets."""

from __future__ import annotations

from collections.abc import Sequence

import eccodes

MISSING = eccodes.CODES_MISSING_DOUBLE
MISSING_LONG = eccodes.CODES_MISSING_LONG

Values = dict[str, float | int | str | Sequence[float] | Sequence[int] | Sequence[str]]


def _set(handle: int, key: str, value) -> None:
    if isinstance(value, str):
        eccodes.codes_set(handle, key, value)
    elif isinstance(value, Sequence) and value and isinstance(value[0], str):
        eccodes.codes_set_string_array(handle, key, list(value))
    elif isinstance(value, Sequence):
        eccodes.codes_set_array(handle, key, list(value))
    else:
        eccodes.codes_set(handle, key, value)


def encode(
    descriptors: Sequence[int],
    category: int,
    subsets: int,
    values: Values | None = None,
    *,
    first: Values | None = None,
    compressed: bool = False,
    replications: dict[str, Sequence[int]] | None = None,
) -> bytes:
    """One BUFR edition 4 message of ``descriptors`` (the unexpanded template).

    ``values``: ecCodes keys set as given after the template is expanded (in a compressed
    message ``#r#key`` takes one value per subset; in an uncompressed one the plain key takes
    every occurrence of all subsets in order). ``first``: one value per subset (a list) or one
    for all, set as the first occurrence of the key in each subset. ``replications``: the
    delayed replication factors (``inputDelayedDescriptorReplicationFactor``, ...) the
    template needs, set first.
    """
    handle = eccodes.codes_bufr_new_from_samples("BUFR4")
    try:
        header = {
            "masterTableNumber": 0,
            "masterTablesVersionNumber": 40,  # WIGOS identifiers (301150) need a recent table
            "dataCategory": category,
            "numberOfSubsets": subsets,
            "compressedData": int(compressed),
            "typicalYear": 2026,
            "typicalMonth": 1,
            "typicalDay": 15,
        }
        for key, value in header.items():
            eccodes.codes_set(handle, key, value)
        for key, factors in (replications or {}).items():
            eccodes.codes_set_array(handle, key, list(factors))
        eccodes.codes_set_array(handle, "unexpandedDescriptors", list(descriptors))
        for key, value in (first or {}).items():
            if compressed:
                _set(handle, f"#1#{key}", value)
                continue
            if isinstance(value, str) or not isinstance(value, Sequence):
                value = [value] * subsets
            # an uncompressed message ranks occurrences through all subsets in order
            per_subset = eccodes.codes_get_size(handle, key) // subsets
            for s, v in enumerate(value):
                _set(handle, f"#{s * per_subset + 1}#{key}", v)
        for key, value in (values or {}).items():
            _set(handle, key, value)
        eccodes.codes_set(handle, "pack", 1)
        return eccodes.codes_get_message(handle)
    finally:
        eccodes.codes_release(handle)


# Three land stations on 2026-01-15 06:00 (the third at 06:30): 10384 with its WIGOS
# identifier, 10385 with block and station numbers only and no dew point, 10386 calm.
SYNOP_STATIONS = ["0-20000-0-10384", "10385", "10386"]
SYNOP = {
    "wigosIdentifierSeries": [0, MISSING_LONG, MISSING_LONG],
    "wigosIssuerOfIdentifier": [20000, MISSING_LONG, MISSING_LONG],
    "wigosIssueNumber": [0, MISSING_LONG, MISSING_LONG],
    "wigosLocalIdentifierCharacter": ["10384", "", ""],
    "blockNumber": [10, 10, 10],
    "stationNumber": [384, 385, 386],
    "year": [2026, 2026, 2026],
    "month": [1, 1, 1],
    "day": [15, 15, 15],
    "hour": [6, 6, 6],
    "minute": [0, 0, 30],
    "latitude": [52.5, 53.0, -33.25],
    "longitude": [13.25, -8.5, 200.0],
    "heightOfStationGroundAboveMeanSeaLevel": [48.0, 110.0, MISSING],
    "nonCoordinatePressure": [100230.0, 99000.0, 101000.0],
    "pressureReducedToMeanSeaLevel": [100810.0, 100300.0, MISSING],
    "airTemperature": [275.15, 270.0, 300.5],
    "dewpointTemperature": [272.0, MISSING, 290.0],
    "windDirection": [270, 90, 0],
    "windSpeed": [5.0, 2.0, 0.0],
}


def synop(compressed: bool) -> bytes:
    """Three SYNOP reports (template 301150 + 307080) in one message of three subsets."""
    return encode([301150, 307080], 0, 3, first=SYNOP, compressed=compressed)


SHIP = {
    "shipOrMobileLandStationIdentifier": "DBBH",
    "year": 2026,
    "month": 1,
    "day": 15,
    "hour": 12,
    "minute": 0,
    "latitude": 54.2,
    "longitude": -30.1,
    "pressureReducedToMeanSeaLevel": 101500.0,
    "airTemperature": 283.4,
    "dewpointTemperature": 280.0,
    "windDirection": 180,
    "windSpeed": 10.0,
}


def ship() -> bytes:
    """One SHIP report (template 308009) without station pressure."""
    return encode([308009], 1, 1, first=SHIP)


# A sounding from 10393 launched 2026-01-15 05:45:00: the surface (a significant level), the
# standard levels 925, 850 and 500 hPa and a significant temperature level at 700 hPa, each
# with the seconds since launch and the drift from the launch site.
TEMP_LEVELS = {
    "timePeriod": [0, 120, 300, 540, 1500],
    "extendedVerticalSoundingSignificance": [131072, 65536, 65536, 8192, 65536],
    "pressure": [100500.0, 92500.0, 85000.0, 70000.0, 50000.0],
    "nonCoordinateGeopotentialHeight": [MISSING_LONG, 780, 1490, MISSING_LONG, 5550],
    "latitudeDisplacement": [0.0, 0.01, 0.02, 0.05, 0.1],
    "longitudeDisplacement": [0.0, 0.02, 0.05, 0.1, 0.3],
    "airTemperature": [274.0, 270.5, 266.0, 258.2, 240.0],
    "dewpointTemperature": [270.0, 268.0, 260.0, 250.0, 230.0],
    "windDirection": [MISSING_LONG, 225, 250, MISSING_LONG, 300],
    "windSpeed": [MISSING, 8.0, 12.0, MISSING, 25.0],
}
TEMP = {
    "blockNumber": 10,
    "stationNumber": 393,
    "year": 2026,
    "month": 1,
    "day": 15,
    "hour": 5,
    "minute": 45,
    "second": 0,
    "latitude": 52.21,
    "longitude": 14.12,
    "heightOfStationGroundAboveMeanSeaLevel": 98.0,
}
# one level of maximum wind shear after the levels: its pressure is not a level of the values
TEMP_SHEAR_PRESSURE = 30000.0


def temp() -> bytes:
    """One TEMP (template 309052) of the five levels of :data:`TEMP_LEVELS` and one wind-shear
    level."""
    levels = {k: [*v, 3600] if k == "timePeriod" else list(v) for k, v in TEMP_LEVELS.items()}
    levels["extendedVerticalSoundingSignificance"].append(1024)
    levels["pressure"].append(TEMP_SHEAR_PRESSURE)
    levels["latitudeDisplacement"].append(0.2)
    levels["longitudeDisplacement"].append(0.5)
    return encode(
        [309052],
        2,
        1,
        {**TEMP, **levels},
        replications={
            "inputExtendedDelayedDescriptorReplicationFactor": [5],
            "inputDelayedDescriptorReplicationFactor": [1],
        },
    )


def temps(compressed: bool) -> bytes:
    """Two soundings (stations 10393 and 10184, launched at 2026-01-15 06:00) in one message:
    compressed, both of 850 and 500 hPa; uncompressed, 10393 of 850 and 500 hPa and 10184 of
    850 hPa only. Temperatures 10393: 266, 240 K; 10184: 265, 239 K."""
    common = {
        "year": 2026,
        "month": 1,
        "day": 15,
        "hour": 6,
        "minute": 0,
        "second": 0,
        "latitude": 52.21,
        "longitude": 14.12,
    }
    if compressed:
        values = {
            "#1#blockNumber": [10, 10],
            "#1#stationNumber": [393, 184],
            **{f"#1#{k}": [v, v] for k, v in common.items()},
            "#1#pressure": [85000.0, 85000.0],
            "#2#pressure": [50000.0, 50000.0],
            "#1#airTemperature": [266.0, 265.0],
            "#2#airTemperature": [240.0, 239.0],
        }
        factors = [2]
    else:
        values = {
            "blockNumber": [10, 10],
            "stationNumber": [393, 184],
            **{k: [v, v] for k, v in common.items()},
            "pressure": [85000.0, 50000.0, 85000.0],
            "airTemperature": [266.0, 240.0, 265.0],
        }
        factors = [2, 1]
    return encode(
        [309052],
        2,
        2,
        values,
        compressed=compressed,
        replications={
            "inputExtendedDelayedDescriptorReplicationFactor": factors,
            "inputDelayedDescriptorReplicationFactor": [0] * len(factors),
        },
    )


# Two AMDAR reports of one aircraft at flight level 10000 m and 3000 m (2026-01-15 07:10:20
# and 07:20:00), with a third of another aircraft without temperature
AIRCRAFT = {
    "aircraftRegistrationNumberOrOtherIdentification": ["EU1234", "EU1234", ""],
    "aircraftFlightNumber": ["LH100", "LH100", "BA200"],
    "year": [2026, 2026, 2026],
    "month": [1, 1, 1],
    "day": [15, 15, 15],
    "hour": [7, 7, 7],
    "minute": [10, 20, 30],
    "second": [20, 0, 0],
    "latitude": [50.0, 50.5, 40.0],
    "longitude": [8.5, 9.0, -3.0],
    "flightLevel": [10000, 3000, 11000],
    "airTemperature": [223.0, 268.0, MISSING],
    "windDirection": [90, 360, 45],
    "windSpeed": [40.0, 10.0, 30.0],
}


def aircraft(compressed: bool = True) -> bytes:
    """Three AMDAR reports (template 311010) in one message."""
    return encode([311010], 4, 3, first=AIRCRAFT, compressed=compressed)


def airep() -> bytes:
    """One aircraft report of template 311001 (flight number, pressure altitude 9000 m as
    ``height``)."""
    values = {
        "aircraftFlightNumber": "KL641",
        "year": 2026,
        "month": 1,
        "day": 15,
        "hour": 8,
        "minute": 0,
        "latitude": 45.0,
        "longitude": -40.0,
        "height": 9000,
        "airTemperature": 228.2,
        "windDirection": 270,
        "windSpeed": 50.0,
    }
    return encode([311001], 4, 1, first=values)


def other_category(category: int = 21) -> bytes:
    """A message of a category the reader skips (the SYNOP template, any category)."""
    values = {"blockNumber": 10, "stationNumber": 384, "airTemperature": 280.0}
    return encode([307080], category, 1, first=values)
