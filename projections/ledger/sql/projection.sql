-- The ledger projection's tables, in one schema that a rebuild can replace as a whole.
-- "{schema}" is the live schema ("ledger") or a rebuild's shadow. Everything here is derived from the
-- stream: a rebuild reproduces it exactly. Money is integer minor units (never float): bigint where
-- one command bounds it (a leg, a hold, a limit), numeric where it sums an unbounded number of legs
-- (balances, running balances): a house or merchant account receives every card's legs.
-- Secondary indexes live in indexes.sql so a rebuild can bulk-load first and index afterwards.

CREATE SCHEMA {schema};

-- The projection's position per source stream (partition-ready: positions name their stream).
CREATE TABLE {schema}.tracking (
    stream          text PRIMARY KEY,
    last_sequence   bigint NOT NULL DEFAULT 0,
    last_event_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per leg: the double-entry journal.
CREATE TABLE {schema}.entries (
    stream          text NOT NULL,
    stream_sequence bigint NOT NULL,
    leg_index       smallint NOT NULL,
    transaction_id  text NOT NULL,
    card_id         text NOT NULL,
    account_id      text NOT NULL,
    amount          bigint NOT NULL CHECK (amount <> 0),
    currency        text NOT NULL,
    direction       text NOT NULL CHECK (direction IN ('debit', 'credit')),
    balance_after   numeric NOT NULL CHECK (balance_after = trunc(balance_after)),
    event_type      text NOT NULL,
    effective_at    timestamptz NOT NULL,
    PRIMARY KEY (stream, stream_sequence, leg_index)
);

-- Current balance per account and currency; available = posted + credit_limit - pending for cards.
CREATE TABLE {schema}.balances (
    account_id      text NOT NULL,
    currency        text NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('card', 'merchant', 'house')),
    card_id         text,
    posted          numeric NOT NULL CHECK (posted = trunc(posted)),
    pending         numeric NOT NULL CHECK (pending = trunc(pending)),
    credit_limit    numeric NOT NULL CHECK (credit_limit = trunc(credit_limit)),
    available       numeric NOT NULL CHECK (available = trunc(available)),
    entry_count     bigint NOT NULL,
    stream          text NOT NULL,
    last_sequence   bigint NOT NULL,
    updated_at      timestamptz NOT NULL,
    PRIMARY KEY (account_id, currency)
);

-- Changes to a card account's holds and limit, so pending and available can be asked "as of".
CREATE TABLE {schema}.card_changes (
    stream          text NOT NULL,
    stream_sequence bigint NOT NULL,
    account_id      text NOT NULL,
    currency        text NOT NULL,
    pending_delta   bigint NOT NULL,
    credit_limit    bigint,
    effective_at    timestamptz NOT NULL,
    PRIMARY KEY (stream, stream_sequence)
);

-- One row per money event (purchases, holds, captures, voids, expiries, refunds, funding,
-- adjustments, declines). Append-only: a transaction's status is derived from its children.
CREATE TABLE {schema}.transactions (
    stream          text NOT NULL,
    stream_sequence bigint NOT NULL,
    transaction_id  text NOT NULL,
    kind            text NOT NULL,
    parent_id       text,
    card_id         text NOT NULL,
    merchant_id     text NOT NULL,
    amount          bigint NOT NULL,
    currency        text NOT NULL,
    reason          text NOT NULL,
    detail          text NOT NULL,
    description     text NOT NULL,
    event_type      text NOT NULL,
    effective_at    timestamptz NOT NULL,
    expires_at      timestamptz,
    PRIMARY KEY (stream, stream_sequence)
);
