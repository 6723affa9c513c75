"""Station tables: ISD-Lite, GHCNh and a generic CSV decoded into reports, every conversion
against hand-computed values, missing markers, reasons and errors that name the culprit."""

import dataclasses
import gzip
import math

import numpy as np
import pandas as pd
import pytest

from appa.observations.ingest.reports import REPORT_COLUMNS
from appa.observations.ingest.stations import (
    Measured,
    StationColumns,
    StationList,
    Wind,
    ghcnh,
    isd_lite,
    read_station_table,
)
from appa.observations.schema import ObservationError

HISTORY = """\
"USAF","WBAN","STATION NAME","CTRY","STATE","ICAO","LAT","LON","ELEV(M)","BEGIN","END"
"010010","99999","JAN MAYEN","NO","","ENJA","+70.933","-008.667","+0009.0","19310101","20240101"
"722590","03927","DALLAS FORT WORTH","US","TX","KDFW","+32.898","-097.019","+0170.7","1973","2024"
"999999","00001","NOWHERE","","","","","","-999.0","19730101","20240101"
"""

# ISD-Lite lines: year month day hour, T, Td (degC x 10), SLP (hPa x 10), direction (deg),
# speed (m/s x 10), sky cover, 1 h and 6 h precipitation (mm x 10)
ISD = """\
2020 01 01 00   -50  -100 10132   270    31     4     0 -9999
2020 01 01 01 -9999  -112 -9999     0     0     4    -1    12

2020 01 01 02    12 -9999  9987    45    20 -9999    25 -9999
2020 01 01 03 -9999 -9999 -9999   999    20 -9999 -9999 -9999
"""


@pytest.fixture
def isd(tmp_path):
    history = tmp_path / "isd-history.csv"
    history.write_text(HISTORY)
    path = tmp_path / "010010-99999-2020"
    path.write_text(ISD)
    return path, isd_lite(history)


def _by(reports: pd.DataFrame, hour: int, variable: str) -> pd.Series:
    rows = reports[(reports["time"].dt.hour == hour) & (reports["variable"] == variable)]
    assert len(rows) == 1, (hour, variable, rows)
    return rows.iloc[0]


def test_isd_lite_conversions_and_missing(isd):
    path, columns = isd
    reports = read_station_table(path, columns)
    assert list(reports.columns) == list(REPORT_COLUMNS)
    assert set(reports["station"]) == {"010010-99999"}
    assert set(reports["platform"]) == {"station"}
    assert (reports["latitude"] == 70.933).all() and (reports["longitude"] == -8.667).all()
    assert (reports["elevation"] == 9.0).all()
    assert reports["level"].isna().all() and (reports["footprint"] == 0).all()
    assert reports["error_std"].isna().all()

    assert _by(reports, 0, "2m_temperature")["value"] == pytest.approx(273.15 - 5.0)
    assert _by(reports, 0, "2m_dewpoint_temperature")["value"] == pytest.approx(273.15 - 10.0)
    assert _by(reports, 0, "mean_sea_level_pressure")["value"] == pytest.approx(101320.0)
    assert _by(reports, 2, "mean_sea_level_pressure")["value"] == pytest.approx(99870.0)
    assert _by(reports, 0, "total_precipitation")["value"] == 0.0
    assert _by(reports, 1, "total_precipitation")["value"] == 0.0  # a trace (-1)
    assert _by(reports, 2, "total_precipitation")["value"] == pytest.approx(2.5e-3)
    # wind from the west (270 deg) at 3.1 m/s blows eastward
    assert _by(reports, 0, "10m_u_component_of_wind")["value"] == pytest.approx(3.1)
    assert _by(reports, 0, "10m_v_component_of_wind")["value"] == pytest.approx(0.0, abs=1e-12)
    # calm: direction 0, speed 0
    assert _by(reports, 1, "10m_u_component_of_wind")["value"] == 0.0
    # from the north-east (45 deg) at 2 m/s: both components negative
    c = 2.0 * math.sin(math.radians(45.0))
    assert _by(reports, 2, "10m_u_component_of_wind")["value"] == pytest.approx(-c)
    assert _by(reports, 2, "10m_v_component_of_wind")["value"] == pytest.approx(-c)
    # -9999 gives no row: hour 1 has no temperature nor pressure, hour 3 only a bad wind
    hour1 = set(reports.loc[reports["time"].dt.hour == 1, "variable"])
    assert hour1 == {
        "2m_dewpoint_temperature",
        "total_precipitation",
        "10m_u_component_of_wind",
        "10m_v_component_of_wind",
    }
    hour3 = reports[reports["time"].dt.hour == 3]
    assert set(hour3["reason"]) == {"wind_direction"} and len(hour3) == 2
    assert (reports.loc[reports["time"].dt.hour < 3, "reason"] == "").all()
    assert len(reports) == 6 + 4 + 5 + 2
    assert (reports["time"] == pd.Timestamp("2020-01-01T02")).sum() == 5  # no dew point


def test_isd_lite_gzipped_reads_the_same(isd, tmp_path):
    path, columns = isd
    packed = tmp_path / "gz" / "010010-99999-2020.gz"
    packed.parent.mkdir()
    with gzip.open(packed, "wt") as f:
        f.write(ISD)
    pd.testing.assert_frame_equal(
        read_station_table(packed, columns), read_station_table(path, columns)
    )


def test_isd_lite_station_missing_from_list_or_without_coordinates(isd, tmp_path):
    _, columns = isd
    unlisted = tmp_path / "123456-00000-2020"
    unlisted.write_text(ISD.splitlines()[0] + "\n")
    reports = read_station_table(unlisted, columns)
    assert set(reports["reason"]) == {"station_not_listed"}
    assert reports["latitude"].isna().all()
    nowhere = tmp_path / "999999-00001-2020"
    nowhere.write_text(ISD.splitlines()[0] + "\n")
    reports = read_station_table(nowhere, columns)
    assert set(reports["reason"]) == {"no_position"}
    assert reports["elevation"].isna().all()  # -999.0 is the list's missing height


def test_isd_lite_file_name_must_hold_the_station(isd, tmp_path):
    _, columns = isd
    odd = tmp_path / "jan-mayen.txt"
    odd.write_text(ISD)
    with pytest.raises(ObservationError, match=r"jan-mayen\.txt.*station pattern"):
        read_station_table(odd, columns)


def test_non_numeric_field_names_file_line_and_column(isd):
    path, columns = isd
    lines = ISD.splitlines()
    lines[3] = lines[3].replace("  9987", "  9x87")  # below the blank line: line 4
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ObservationError) as error:
        read_station_table(path, columns)
    message = str(error.value)
    assert str(path) in message and "line 4" in message
    assert "'sea_level_pressure'" in message and "'9x87'" in message


def test_unparseable_time_names_line_and_columns(isd):
    path, columns = isd
    lines = ISD.splitlines()
    lines[1] = "2020 13" + lines[1][7:]  # month 13
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        ObservationError,
        match=r"line 2, columns \['year', 'month'.*'2020 13 01 01'",
    ):
        read_station_table(path, columns)


def test_isd_history_listing_a_station_twice(tmp_path):
    history = tmp_path / "isd-history.csv"
    history.write_text(HISTORY + HISTORY.splitlines()[1].replace("+70.933", "+71.000") + "\n")
    path = tmp_path / "010010-99999-2020"
    path.write_text(ISD)
    with pytest.raises(
        ObservationError,
        match=r"isd-history\.csv: station '010010-99999' is listed with diff",
    ):
        read_station_table(path, isd_lite(history))


# --- a generic CSV ---------------------------------------------------------------------------

CSV = """\
id,when,lat,lon,height,t,t_err,slp,u,v,spd,dir
A,2021-06-01 12:00,50.0,350.0,100,20.5,0.5,1013.2,1.0,-2.0,10,180
A,2021-06-01 13:00,50.0,350.0,100,NA,,1012.0,,,NA,90
B,2021-06-01 12:30,-33.9,-190.0,,-1.5,1.0,NA,0.0,0.0,0,0
"""


def _generic(**overrides) -> StationColumns:
    fields = dict(
        variables={
            "t": Measured("2m_temperature", "degC", error="t_err"),
            "slp": Measured("mean_sea_level_pressure", "mbar"),
            "u": Measured("10m_u_component_of_wind", "m/s"),
            "v": Measured("10m_v_component_of_wind", "m/s"),
        },
        time=("when",),
        time_format="%Y-%m-%d %H:%M",
        station="id",
        latitude="lat",
        longitude="lon",
        elevation="height",
    )
    fields.update(overrides)
    return StationColumns(**fields)


def test_generic_csv_units_errors_components_and_any_longitude(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(CSV)
    reports = read_station_table(path, _generic())
    a12 = reports[(reports["station"] == "A") & (reports["time"].dt.hour == 12)]
    t = a12[a12["variable"] == "2m_temperature"].iloc[0]
    assert t["value"] == pytest.approx(293.65)
    assert t["error_std"] == pytest.approx(0.5)  # an uncertainty converts as a difference
    assert a12[a12["variable"] == "mean_sea_level_pressure"]["value"].item() == pytest.approx(
        101320.0
    )
    assert a12[a12["variable"] == "10m_v_component_of_wind"]["value"].item() == -2.0
    b = reports[reports["station"] == "B"]
    assert set(b["variable"]) == {
        "2m_temperature",
        "10m_u_component_of_wind",
        "10m_v_component_of_wind",
    }
    assert (b["longitude"] == -190.0).all() and b["elevation"].isna().all()
    assert b[b["variable"] == "2m_temperature"]["error_std"].item() == pytest.approx(1.0)
    # missing "NA" and empty fields give no rows
    a13 = reports[(reports["station"] == "A") & (reports["time"].dt.hour == 13)]
    assert a13["variable"].tolist() == ["mean_sea_level_pressure"]
    assert (reports["reason"] == "").all()


def test_wind_speed_in_knots_to_components(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(CSV)
    columns = _generic(variables={}, wind=Wind(speed="spd", direction="dir", units="kt"))
    reports = read_station_table(path, columns)
    a12 = reports[(reports["station"] == "A") & (reports["time"].dt.hour == 12)]
    # from the south (180 deg) at 10 kt: northward, 10 * 1852 / 3600 m/s
    assert a12[a12["variable"] == "10m_v_component_of_wind"]["value"].item() == pytest.approx(
        10 * 1852 / 3600
    )
    assert a12[a12["variable"] == "10m_u_component_of_wind"]["value"].item() == pytest.approx(
        0.0, abs=1e-12
    )
    assert len(reports) == 4  # A at 13:00 has no speed


def test_time_zones_offsets_and_daylight_saving(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(CSV)
    shifted = read_station_table(path, _generic(time_zone="+05:30"))
    assert shifted["time"].iloc[0] == pd.Timestamp("2021-06-01T06:30")
    summer = read_station_table(path, _generic(time_zone="Europe/Brussels"))
    assert summer["time"].iloc[0] == pd.Timestamp("2021-06-01T10:00")  # CEST = UTC+2

    # 02:30 on 31 Oct 2021 happened twice in Brussels: kept with a reason
    autumn = CSV.replace("2021-06-01 13:00", "2021-10-31 02:30")
    path.write_text(autumn)
    reports = read_station_table(path, _generic(time_zone="Europe/Brussels"))
    assert set(reports.loc[reports["time"].isna(), "reason"]) == {"ambiguous_local_time"}
    assert (reports.loc[reports["time"].notna(), "reason"] == "").all()

    # times with their own offsets keep them, whatever the zone
    own = (
        CSV.replace("2021-06-01 12:00", "2021-06-01T12:00+02:00")
        .replace("2021-06-01 12:30", "2021-06-01T12:30-03:00")
        .replace("2021-06-01 13:00", "2021-06-01T13:00Z")
    )
    path.write_text(own)
    reports = read_station_table(path, _generic(time_format="ISO8601", time_zone="Asia/Tokyo"))
    hours = reports.groupby("station")["time"].min()
    assert hours["A"] == pd.Timestamp("2021-06-01T10:00")
    assert hours["B"] == pd.Timestamp("2021-06-01T15:30")


def test_missing_columns_and_unknown_units(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(CSV.replace("slp", "pressure"))
    with pytest.raises(ObservationError, match=r"obs\.csv: no columns \['slp'\]"):
        read_station_table(path, _generic())
    with pytest.raises(ObservationError, match=r"column 't'.*'furlong'"):
        _generic(variables={"t": Measured("2m_temperature", "furlong")})
    with pytest.raises(ObservationError, match=r"column 't'.*'hPa' cannot be converted"):
        _generic(variables={"t": Measured("2m_temperature", "hPa")})
    with pytest.raises(ObservationError, match=r"'air_temp'.*no canonical units"):
        _generic(variables={"t": Measured("air_temp", "K")})
    with pytest.raises(ObservationError, match="time zone 'Mars/Olympus'"):
        _generic(time_zone="Mars/Olympus")


def test_missing_marker_versus_non_numeric(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(CSV.replace(",NA,,1012.0", ",M,,1012.0"))
    with pytest.raises(ObservationError, match=r"line 3, column 't': 'M' is not a number"):
        read_station_table(path, _generic())
    reports = read_station_table(path, _generic(missing=("", "NA", "M")))
    assert (
        len(reports[(reports["station"] == "A") & (reports["variable"] == "2m_temperature")]) == 1
    )
    # a numeric marker matches however it is written
    path.write_text(CSV.replace(",NA,,1012.0", ",-99.0,,1012.0"))
    reports = read_station_table(path, _generic(missing=("", "NA", "-99")))
    assert (
        len(reports[(reports["station"] == "A") & (reports["variable"] == "2m_temperature")]) == 1
    )


def test_header_only_table_gives_no_reports(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(CSV.splitlines()[0] + "\n")
    reports = read_station_table(path, _generic())
    assert len(reports) == 0 and list(reports.columns) == list(REPORT_COLUMNS)


def test_station_list_for_a_table_with_ids_and_scaled_tenths(tmp_path):
    stations = tmp_path / "stations.txt"
    stations.write_text("code lat lon alt\nX1 10.5 200.0 12\nX2 -89.0 0 2800\n")
    table = tmp_path / "obs.txt"
    table.write_text("code;date;hour;temp\nX1;2022-01-02;6;-123\nX2;2022-01-02;18;-5\n")
    columns = StationColumns(
        variables={"temp": Measured("2m_temperature", "degC", scale=0.1)},
        time=("date", "hour"),
        time_format="%Y-%m-%d %H",
        station="code",
        stations=StationList(stations, ("code",), "lat", "lon", "alt", delimiter=None),
        delimiter=";",
    )
    reports = read_station_table(table, columns)
    assert reports["value"].tolist() == pytest.approx([273.15 - 12.3, 273.15 - 0.5])
    assert reports["latitude"].tolist() == [10.5, -89.0]
    assert reports["longitude"].tolist() == [200.0, 0.0]
    assert reports["elevation"].tolist() == [12.0, 2800.0]
    assert reports["time"].tolist() == [
        pd.Timestamp("2022-01-02T06"),
        pd.Timestamp("2022-01-02T18"),
    ]


# --- GHCNh -----------------------------------------------------------------------------------


def _ghcnh_line(values: dict[str, str]) -> str:
    return "|".join(values.get(c, "") for c in GHCNH_HEADER)


GHCNH_HEADER = ["Station_ID", "Station_name", "Year", "Month", "Day", "Hour", "Minute"]
GHCNH_HEADER += ["Latitude", "Longitude", "Elevation"]
for _v in ("temperature", "dew_point_temperature", "station_level_pressure"):
    GHCNH_HEADER += [_v] + [f"{_v}_{s}" for s in ("Measurement_Code", "Quality_Code")]
    GHCNH_HEADER += [f"{_v}_{s}" for s in ("Report_Type", "Source_Code", "Source_Station_ID")]
for _v in ("sea_level_pressure", "wind_direction", "wind_speed"):
    GHCNH_HEADER += [_v] + [f"{_v}_{s}" for s in ("Measurement_Code", "Quality_Code")]
    GHCNH_HEADER += [f"{_v}_{s}" for s in ("Report_Type", "Source_Code", "Source_Station_ID")]


def test_ghcnh_quality_codes_and_units(tmp_path):
    common = dict(Station_ID="USW00013874", Station_name="ATLANTA", Year="2023", Month="07")
    common.update(Day="04", Latitude="33.6301", Longitude="-84.4418", Elevation="308.2")
    rows = [
        dict(common, Hour="12", Minute="52", temperature="27.8", temperature_Quality_Code="",
             dew_point_temperature="21.1", dew_point_temperature_Quality_Code="1",
             sea_level_pressure="1016.9", station_level_pressure="980.0",
             wind_direction="200", wind_speed="4.6"),
        dict(common, Hour="13", Minute="52", temperature="99.0", temperature_Quality_Code="W",
             wind_direction="200", wind_direction_Quality_Code="3", wind_speed="4.6"),
    ]  # fmt: skip
    path = tmp_path / "GHCNh_USW00013874_por.psv"
    path.write_text("\n".join(["|".join(GHCNH_HEADER), *map(_ghcnh_line, rows)]) + "\n")
    reports = read_station_table(path, ghcnh())
    first = reports[reports["time"] == pd.Timestamp("2023-07-04T12:52")]
    values = dict(zip(first["variable"], first["value"], strict=True))
    assert values["2m_temperature"] == pytest.approx(300.95)
    assert values["2m_dewpoint_temperature"] == pytest.approx(294.25)
    assert values["mean_sea_level_pressure"] == pytest.approx(101690.0)
    assert values["surface_pressure"] == pytest.approx(98000.0)
    assert values["10m_v_component_of_wind"] == pytest.approx(4.6 * math.cos(math.radians(20)))
    assert (first["reason"] == "").all() and (first["elevation"] == 308.2).all()
    second = reports[reports["time"] == pd.Timestamp("2023-07-04T13:52")]
    assert len(second) == 3 and set(second["reason"]) == {"source_flag"}


def test_quality_codes_only_for_value_columns():
    with pytest.raises(ObservationError, match="quality codes given for"):
        dataclasses.replace(ghcnh(), quality={"visibility": "visibility_Quality_Code"})


def test_station_identifier_given_once():
    with pytest.raises(ObservationError, match="one of the two"):
        _generic(station_from_name=r"(\w+)")
    with pytest.raises(ObservationError, match="one of the two"):
        _generic(station=None)


def test_rows_are_numpy_dtypes(tmp_path):
    path = tmp_path / "obs.csv"
    path.write_text(CSV)
    reports = read_station_table(path, _generic())
    assert reports["value"].dtype == np.float64
    assert reports["time"].dtype == np.dtype("datetime64[ns]")
