"""Data quality: dedup, filters, LLM-judge scoring, topic balance, curation and reports.

Everything here reads datasets (a run folder through `synthgen.engine.runs`, a `save_to_disk`
folder, parquet/jsonl or a Hub id) and writes a new dataset folder; nothing edits a run in place.
"""
