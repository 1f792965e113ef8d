-- Secondary indexes of the ledger projection (created after the bulk load during a rebuild).

-- ListEntries keyset pagination and "as of" sums; INCLUDE lets the sums be index-only.
CREATE INDEX entries_account_time ON {schema}.entries
    (account_id, effective_at, stream, stream_sequence, leg_index) INCLUDE (amount, currency);
CREATE INDEX entries_transaction ON {schema}.entries (transaction_id);
CREATE INDEX card_changes_account_time ON {schema}.card_changes (account_id, effective_at);
CREATE INDEX transactions_id ON {schema}.transactions (transaction_id);
CREATE INDEX transactions_parent ON {schema}.transactions (parent_id) WHERE parent_id IS NOT NULL;
