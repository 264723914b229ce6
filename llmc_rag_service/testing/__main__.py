"""``python -m llmc_rag_service.testing --port 11434 --model M``: run the Ollama emulator (see ``emulator.main``)."""

import sys

from llmc_rag_service.testing.emulator import main

sys.exit(main())
