"""The vocabulary every layer needs, at the bottom of the house: errors and fault points, atomic
file writes, the record rows (search, final, fold) and their one ranking, the method names and
labels, the trials executors run, the statistics, the registries, the run's config as a plain
value, and the callbacks. Nothing here imports from another blocktune subpackage."""

__version__ = "0.1.0"
