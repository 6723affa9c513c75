"""Ingest of real observation formats into observation stores: readers of BUFR reports, station
tables and satellite swaths return decoded reports (:mod:`~appa.observations.ingest.reports`)
in canonical names and SI units (:mod:`~appa.observations.ingest.convert`)."""
