"""Streamlit helpers for the pages, one job per module.

- :mod:`.state`: the one accessor to the process context (settings, models, thresholds,
  review queue, score cache, decoder, fetcher);
- :mod:`.charts`: every Altair chart of the pages;
- :mod:`.widgets`: blurred previews, data URIs, verdict labels and other texts, curl examples;
- :mod:`.inputs`: what the classify page reads (URLs, uploads, the snapshot) and its loaders.
"""
