"""What an operator sees of a running jetledger: per-RPC metrics and the platform collectors
(``metrics``), JSON logs that carry the command's id and the trace (``logs``), and OpenTelemetry
traces carried through the events' ``traceparent`` header (``tracing``). docs/metrics.md lists
every series; ops/README.md says how to use them.
"""
