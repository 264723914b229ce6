"""Files -> spans -> jobs: ignore rules, decoding, tree-sitter, span cutting, the scanner and the scan scheduler."""
