-- Operational state of the ledger projection: never touched by a rebuild.

CREATE SCHEMA IF NOT EXISTS ledger_ops;

-- The fencing token of the single active projector: every leader bumps the epoch when it takes
-- over, and every batch transaction checks it, so a deposed leader can never commit again.
CREATE TABLE ledger_ops.projector_lease (
    projection      text PRIMARY KEY,
    epoch           bigint NOT NULL,
    holder          text NOT NULL,
    acquired_at     timestamptz NOT NULL DEFAULT now()
);

-- ledger.entry_created events waiting for the relay (written in the projector's batch transaction).
CREATE TABLE ledger_ops.outbox (
    id              bigserial PRIMARY KEY,
    entry_id        text NOT NULL,
    subject         text NOT NULL,
    payload         bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
