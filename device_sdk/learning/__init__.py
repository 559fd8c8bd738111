"""The hard-example loop on a node: select, keep durably, upload, relay."""
