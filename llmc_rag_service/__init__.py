"""llmc-rag-service: keeps an LLM-written enrichment of code repositories fresh.

See ``DESIGN.md`` in the shared folder and the README for the architecture; each
module has one owner and one job (config, store, spans, scanner, watcher, queue,
ollama, enrichment, workers, notify, logging, daemon, cli).
"""

__version__ = "0.1.0"
