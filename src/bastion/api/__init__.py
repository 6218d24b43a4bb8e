"""HTTP routes and SSE: the only place that knows about HTTP."""
