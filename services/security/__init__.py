"""Security of jetledger: who calls (identity, roles, tokens), what they may call (the access
table and its interceptor), TLS on every hop, the local PKI, and least-privilege NATS users.

See docs/security.md for the threat model and how keys and certificates are made and rotated.
"""
