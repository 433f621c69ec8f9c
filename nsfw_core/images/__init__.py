"""Bytes in, pixels out: the SSRF-safe fetcher (``fetch``), format sniffing (``sniff``), the cost read from
an image's declared structure before anything is decoded (``structure``), animations' frames (``frames``),
bounded decoding (``decode``), the isolated decode lane (``sandbox``), the model's preprocessing
(``preprocess``) and perceptual hashes of its input (``phash``)."""
