"""``wan-parity serve``: the seed's HTTP inference API on the exact ai-toolkit sampler.

``server`` (arguments, the one engine, uvicorn), ``app`` (Starlette routes and the token), ``requests`` (request
validation: the request-file rules plus allowed roots), ``jobs`` (job records on disk, atomic, kept across
restarts), ``worker`` (one render at a time from a bounded queue). Starlette and uvicorn are imported only here.
"""
