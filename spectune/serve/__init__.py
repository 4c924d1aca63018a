"""`spectune serve`: an OpenAI-compatible HTTP server on FastAPI + uvicorn.

schemas.py    request bodies (OpenAI's shapes) and the OpenAI-style error object
scheduler.py  dynamic batching: one engine thread decoding all requests together (continuous batching)
app.py        the endpoints, auth, limits, streaming (server-sent events), Prometheus metrics
run.py        loading the models and running uvicorn with a graceful shutdown
"""
