"""Baselines measured in the same run as Tandem, so every figure is a ratio taken on the same machine and minute.

- ``raw_torch`` (B0): the model called in-process by torch, at each batch size: the ceiling.
- ``naive`` (B1): the "basic setup", one FastAPI + uvicorn process running the model once per request.
- ``echo`` (B2): a bare FastAPI endpoint that answers the same payload with no model: the HTTP floor.

B1 and B2 serve ``POST /v2/models/{model}/infer`` with the same V2 JSON bodies as Tandem, so one load
generator drives all three.
"""
