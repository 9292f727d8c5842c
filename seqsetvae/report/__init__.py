"""Cross-fold summaries and the human-readable report (stages `aggregate` and `report`).

Kept apart from seqsetvae/evaluation (which the per-fold evaluate and baseline stages depend on), so a
change to the report's code reruns only the aggregate and report stages.
"""
