"""Streaming: the selected tables run as micro-batches, one run per batch (see ``loop``)."""
