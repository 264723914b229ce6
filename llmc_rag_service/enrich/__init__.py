"""Jobs -> Ollama -> enrichments: the prompt, schema and validation, the HTTP client and its error taxonomy, the worker pool."""
