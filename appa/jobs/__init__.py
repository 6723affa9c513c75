"""The job layer: one config and one run function per command (``appa train``, ``encode``,
``reanalysis | filter | forecast``, ``baseline``, ``npe``, ``lensing``, ``demo``,
``showcase``). Configs live here only; the library below takes objects and plain arguments."""
