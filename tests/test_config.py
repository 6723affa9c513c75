"""Config loading: dates and periods as users write them, and the errors that name the key."""

import datetime

import pytest

from appa.config import ConfigError, DateText, Period, StrictModel, Timestamp, load_config


class _Dated(StrictModel):
    day: DateText | None = None
    instant: Timestamp = "2000-01-01T00:00:00"
    period: Period | None = None


def test_dates_from_yaml_are_strings():
    config = load_config(
        _Dated, None, ["day=2003-01-01", "instant=2003-03-01", "period=[2000-01-01, 2001-12-31]"]
    )
    # YAML hands date objects: periods keep what was written (whole days), instants are ISO
    assert config.day == "2003-01-01"
    assert config.instant == "2003-03-01T00:00:00"
    assert config.period == ("2000-01-01", "2001-12-31")
    assert _Dated(day=datetime.date(2003, 1, 2)).day == "2003-01-02"


@pytest.mark.parametrize(
    "override, message",
    [
        ("day=2003-13-01", r"override day: cannot parse value '2003-13-01'"),
        ("day='2003-13-01'", r"day: Value error, '2003-13-01' is not a date"),
        ("instant=soon", r"instant: Value error, 'soon' is not a date"),
        ("period=[2001-01-01, 2000-01-01]", "period: Value error, the period ends"),
    ],
)
def test_bad_dates_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(_Dated, None, [override])


def test_an_impossible_date_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("day: 2003-02-30\n")
    with pytest.raises(ConfigError, match=r"job\.yaml: not valid YAML: day is out of range"):
        load_config(_Dated, path)


def test_differing_keys_name_every_changed_path():
    from appa.config import differing_keys

    saved = {"loop": {"lr": 1e-3, "steps": 10}, "preset": "tiny", "old": 1}
    now = {"loop": {"lr": 2e-3, "steps": 10}, "preset": "tiny", "new": 2}
    assert differing_keys(saved, now) == ["loop.lr", "new", "old"]
    assert differing_keys(saved, saved) == [] and differing_keys(1, 2) == ["<root>"]
