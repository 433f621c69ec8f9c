"""nsfw_core: fetch, decode, classify and judge images with GantMan's nsfw_model.

The package is free of any web framework: the Streamlit pages and the
Starlette API (``nsfw_core.http.app``) are thin layers over these modules.

- ``settings``: every setting, read from the environment (``load_settings``).
- ``errors``: the typed errors, each with an HTTP status and a stable code.
- ``fetch``: the SSRF-safe URL fetcher.
- ``decode``: bytes -> RGB pixels, with format sniffing and pixel limits.
- ``model``: the networks, loaded once per process (``get_model``).
- ``pipeline``: the shared steps from a source to scores.
- ``verdict``: the three-state rule (and the old thresholds file, imported once by ``thresholds``).
- ``thresholds``: the thresholds in force, a versioned history in the one database (``ThresholdHistory``).
"""

__version__ = "0.1.0"
