"""Streamlit helpers for the pages, one job per module.

- :mod:`.state`: the one accessor to the process context (settings, models, thresholds,
  review queue, score cache, decoder, fetcher);
- :mod:`.charts`: every Altair chart of the pages;
- :mod:`.widgets`: blurred previews, data URIs, verdict labels and other texts, curl examples;
- :mod:`.inputs`: what the classify page reads (URLs, uploads, the snapshot) and its loaders;
- the Calibrate page's steps: :mod:`.calibration_controls` (the sidebar), :mod:`.labelled_sets` (the
  set's sources), :mod:`.set_scores` (its scores in the session), :mod:`.calibration_views` (the
  sections on a scored set), :mod:`.thresholds_history` (in force, history, save, rollback).
"""
