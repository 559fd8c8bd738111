"""Model bundles and their life on a node: manifest, signature, LiteRT runtime, hot swap, updates."""
