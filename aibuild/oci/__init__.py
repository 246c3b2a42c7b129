"""Shared image and registry primitives, below both building and publishing.

- ``reference``: image references by the distribution spec's grammar (one parser).
- ``media``: media types, the streaming chunk size, the image-config time format.
- ``archive``: ``docker save``/``docker load`` archives and the blob cache of
  deterministic gzip layers.
- ``credentials``: registry logins (explicit, environment, Docker config and helpers).
- ``registry``: a small registry HTTP API v2 client with retries and token auth.
"""
