"""``python -m llmc_rag_service`` is the same as the ``llmc-rag`` command."""

from llmc_rag_service.cli import main

raise SystemExit(main())
