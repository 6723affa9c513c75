"""Throughput of the BUFR reader (``read_bufr``) vs bare decoding of the same values.

Encodes a file of SYNOP reports (template 301150 + 307080, ``--subsets`` stations per message)
and a file of TEMP soundings (309052, one per message), then times, on each file:

- ``read_bufr``: decoding, station identifiers, times, SI conversion, wind components and the
  checked reports frame;
- ecCodes keys: the baseline, unpacking each message and reading the same keys as arrays
  (no identifiers, times, conversions or frame);
- pdbufr: ``pdbufr.read_bufr`` of the same keys (one row per report or level).

Prints observations (rows of ``read_bufr``) per second for each and the ratios.

    python benchmarks/bench_ingest_bufr.py [--stations 5000] [--subsets 10] [--compressed]
        [--soundings 200] [--levels 100] [--no-pdbufr]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import eccodes
import numpy as np

from appa.observations.ingest.bufr import read_bufr

SYNOP_KEYS = [
    "wigosIdentifierSeries", "wigosIssuerOfIdentifier", "wigosIssueNumber", "blockNumber",
    "stationNumber", "year", "month", "day", "hour", "minute", "latitude", "longitude",
    "heightOfStationGroundAboveMeanSeaLevel", "nonCoordinatePressure",
    "pressureReducedToMeanSeaLevel", "airTemperature", "dewpointTemperature", "windDirection",
    "windSpeed",
]  # fmt: skip
TEMP_KEYS = [
    "blockNumber", "stationNumber", "year", "month", "day", "hour", "minute", "second",
    "latitude", "longitude", "pressure", "nonCoordinateGeopotentialHeight", "airTemperature",
    "windDirection", "windSpeed", "timePeriod", "latitudeDisplacement", "longitudeDisplacement",
]  # fmt: skip


def _message(descriptors, category, subsets, compressed, values, replications=None) -> bytes:
    handle = eccodes.codes_bufr_new_from_samples("BUFR4")
    header = {
        "masterTableNumber": 0, "masterTablesVersionNumber": 40, "dataCategory": category,
        "numberOfSubsets": subsets, "compressedData": int(compressed), "typicalYear": 2026,
        "typicalMonth": 1, "typicalDay": 15,
    }  # fmt: skip
    for key, value in header.items():
        eccodes.codes_set(handle, key, value)
    for key, value in (replications or {}).items():
        eccodes.codes_set_array(handle, key, value)
    eccodes.codes_set_array(handle, "unexpandedDescriptors", descriptors)
    for key, value in values.items():
        if isinstance(value[0], str):
            eccodes.codes_set_string_array(handle, key, value)
        else:
            eccodes.codes_set_array(handle, key, value)
    eccodes.codes_set(handle, "pack", 1)
    message = eccodes.codes_get_message(handle)
    eccodes.codes_release(handle)
    return message


def write_synop(path: Path, stations: int, subsets: int, compressed: bool, seed: int) -> None:
    """``stations`` SYNOP reports with random values, a tenth without dew point."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as out:
        for start in range(0, stations, subsets):
            n = min(subsets, stations - start)
            ids = np.arange(start, start + n)
            dew = 270.0 + 10 * rng.random(n)
            dew[rng.random(n) < 0.1] = eccodes.CODES_MISSING_DOUBLE
            columns = {
                "wigosIdentifierSeries": [0] * n,
                "wigosIssuerOfIdentifier": [20000] * n,
                "wigosIssueNumber": [0] * n,
                "wigosLocalIdentifierCharacter": [f"{10000 + i}" for i in ids],
                "blockNumber": list(10 + ids // 1000),
                "stationNumber": list(ids % 1000),
                "year": [2026] * n, "month": [1] * n, "day": [15] * n,
                "hour": list(rng.integers(0, 24, n)), "minute": [0] * n,
                "latitude": list(rng.uniform(-90, 90, n)),
                "longitude": list(rng.uniform(-180, 180, n)),
                "heightOfStationGroundAboveMeanSeaLevel": list(rng.uniform(0, 3000, n)),
                "nonCoordinatePressure": list(rng.uniform(70000, 103000, n)),
                "pressureReducedToMeanSeaLevel": list(rng.uniform(97000, 104000, n)),
                "airTemperature": list(rng.uniform(230, 310, n)),
                "dewpointTemperature": list(dew),
                "windDirection": list(rng.integers(0, 361, n)),
                "windSpeed": list(rng.uniform(0, 30, n)),
            }  # fmt: skip
            key = "#1#{}" if compressed else "{}"
            values = {key.format(k): v for k, v in columns.items()}
            out.write(_message([301150, 307080], 0, n, compressed, values))


def write_temp(path: Path, soundings: int, levels: int, seed: int) -> None:
    """``soundings`` TEMPs of ``levels`` levels from 1000 to 10 hPa."""
    rng = np.random.default_rng(seed)
    pressure = np.linspace(100000.0, 1000.0, levels)
    height = np.linspace(100, 30000, levels).astype(int)
    with open(path, "wb") as out:
        for i in range(soundings):
            values = {
                "blockNumber": [10 + i // 1000], "stationNumber": [i % 1000],
                "year": [2026], "month": [1], "day": [15], "hour": [0], "minute": [0],
                "second": [0], "latitude": [rng.uniform(-90, 90)],
                "longitude": [rng.uniform(-180, 180)],
                "timePeriod": list(np.arange(levels) * 30),
                "pressure": list(pressure),
                "nonCoordinateGeopotentialHeight": list(height),
                "latitudeDisplacement": list(np.linspace(0, 0.5, levels)),
                "longitudeDisplacement": list(np.linspace(0, 0.5, levels)),
                "airTemperature": list(rng.uniform(200, 300, levels)),
                "windDirection": list(rng.integers(0, 361, levels)),
                "windSpeed": list(rng.uniform(0, 60, levels)),
            }  # fmt: skip
            replications = {
                "inputExtendedDelayedDescriptorReplicationFactor": [levels],
                "inputDelayedDescriptorReplicationFactor": [0],
            }
            out.write(_message([309052], 2, 1, False, values, replications))


def bare_eccodes(path: Path, keys: list[str]) -> int:
    """The baseline: every message unpacked and ``keys`` read as arrays; values read."""
    count = 0
    with open(path, "rb") as stream:
        while (handle := eccodes.codes_bufr_new_from_file(stream)) is not None:
            eccodes.codes_set(handle, "skipExtraKeyAttributes", 1)
            eccodes.codes_set(handle, "unpack", 1)
            prefix = "#1#" if eccodes.codes_get(handle, "compressedData") else ""
            for key in keys:
                count += eccodes.codes_get_double_array(handle, prefix + key).size
            if "wigosIssueNumber" in keys:
                eccodes.codes_get_string_array(handle, prefix + "wigosLocalIdentifierCharacter")
            eccodes.codes_release(handle)
    return count


def bare_pdbufr(path: Path, keys: list[str]) -> int:
    import pdbufr

    return len(pdbufr.read_bufr(str(path), columns=keys))


def best_of(repeats: int, fn, *args) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stations", type=int, default=5000)
    parser.add_argument("--subsets", type=int, default=10, help="SYNOP reports per message")
    parser.add_argument("--compressed", action="store_true", help="compressed SYNOP messages")
    parser.add_argument("--soundings", type=int, default=200)
    parser.add_argument("--levels", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-pdbufr", action="store_true", help="skip the pdbufr baseline")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        synop, temp = Path(tmp) / "synop.bufr", Path(tmp) / "temp.bufr"
        write_synop(synop, args.stations, args.subsets, args.compressed, seed=0)
        write_temp(temp, args.soundings, args.levels, seed=1)
        kind = "compressed" if args.compressed else "uncompressed"
        cases = [
            (f"SYNOP {args.stations} x {args.subsets}/msg {kind}", synop, SYNOP_KEYS),
            (f"TEMP {args.soundings} x {args.levels} levels", temp, TEMP_KEYS),
        ]
        print(f"{'file':<40} {'obs':>8} {'read_bufr':>11} {'ecCodes':>11} {'pdbufr':>11}"
              f" {'ours/ecCodes':>13} {'ours/pdbufr':>12}")  # fmt: skip
        for name, path, keys in cases:
            observations = len(read_bufr([path]))
            ours = observations / best_of(args.repeats, read_bufr, [path])
            bare = observations / best_of(args.repeats, bare_eccodes, path, keys)
            line = f"{name:<40} {observations:>8} {ours:>9.0f}/s {bare:>9.0f}/s"
            if args.no_pdbufr:
                print(f"{line} {'-':>11} {ours / bare:>13.2f} {'-':>12}")
            else:
                other = observations / best_of(1, bare_pdbufr, path, keys)
                print(f"{line} {other:>9.0f}/s {ours / bare:>13.2f} {ours / other:>12.2f}")


if __name__ == "__main__":
    main()
