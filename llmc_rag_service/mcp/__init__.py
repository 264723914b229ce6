"""The MCP server for coding agents (``llmc-rag mcp``; optional extra ``[mcp]``).

Built on the official ``mcp`` Python SDK (``mcp.server.mcpserver.MCPServer``),
served on stdio, reading the same store as the daemon, read-only, while it
writes. Tools: ``search_code``, ``get_span``, ``index_status`` (see
:mod:`~llmc_rag_service.mcp.server`).
"""
