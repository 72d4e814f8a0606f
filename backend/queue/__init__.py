"""The job queue, ARQ on Redis: the only package that imports arq. Domains enqueue, abort and
prune through `jobs`; the worker process runs `worker.QueueWorker` with plain job specs."""
