"""Running renders for others: the job queue, the HTTP API, the worker process and its environment."""
