"""Private set intersection cardinality across agencies (issue 13, phase 1).

A self-contained library: NHS number validation (`nhs`), X25519 blinding
(`group`), sealed party-to-party messages (`seal`) and the multi-party protocol
(`protocol`). It imports nothing from the node or the coordinator; a node passes
its own OpenDP-backed noise source in. docs/overlap.md explains the design.
"""
