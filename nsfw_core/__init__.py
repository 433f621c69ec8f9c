"""nsfw_core: fetch, decode, classify and judge images with GantMan's nsfw_model.

The package is free of any web framework but Starlette's request types in ``http``; the Streamlit pages
(``pages/``, ``nsfw_ui/``) are thin layers over it.  Its folders follow an image's way through the
service, each floor importing only the floors below it (``tests/test_architecture.py`` checks it):

- ``base``: what every floor uses: the settings table, the error tree, labels, the three-state rule,
  atomic files, logs, request ids.
- ``images``: bytes in: the SSRF-safe fetcher, format sniffing, declared structure and cost, frames,
  bounded decoding, the isolated lane, preprocessing, perceptual hashes.
- ``inference``: model files, runtimes (LiteRT, TensorFlow), the micro-batcher, the shared pipeline,
  and the process's one model registry.
- ``state``: the one database (``db``, ``migrations``) and what lives in it: the review queue, the
  thresholds history, remembered decisions and hash lists, the webhooks' outbox.
- ``calibration``: the maths of choosing thresholds, labelled sets, the score cache.
- top level: ``intake`` (fetch and decode for the API), ``classify`` (the use case and its result),
  ``access``, ``admission``, ``ratelimit``, ``metrics``, ``context`` (the parts of one process, built
  once), ``cli`` and ``client``.
- ``http``: the API: routes, the typed contract of both generations, the OpenAPI document.
"""

__version__ = "0.1.0"
