-- The compatibility surface other services read: names and types as DESIGN.md lists them.
-- orders and positions keep one row per id: the latest version wins (read with FINAL).
CREATE TABLE IF NOT EXISTS {db}.orders
(
    order_id UUID,
    created_at DateTime64(3, 'UTC'),
    signal_id UUID,
    symbol LowCardinality(String),
    timeframe String,
    order_type Enum8('market' = 1, 'limit' = 2, 'stop' = 3, 'stop_limit' = 4),
    side Enum8('buy' = 1, 'sell' = 2),
    quantity Float64,
    price Nullable(Float64),
    stop_price Nullable(Float64),
    order_status Enum8('pending' = 1, 'submitted' = 2, 'partially_filled' = 3, 'filled' = 4,
                       'cancelled' = 5, 'rejected' = 6, 'failed' = 7),
    broker_order_id Nullable(String),
    broker String DEFAULT 'MT5',
    submitted_at Nullable(DateTime64(3, 'UTC')),
    filled_at Nullable(DateTime64(3, 'UTC')),
    cancelled_at Nullable(DateTime64(3, 'UTC')),
    filled_quantity Float64,
    average_fill_price Nullable(Float64),
    commission Nullable(Float64),
    rejection_reason Nullable(String),
    error_message Nullable(String),
    expected_price Float64,
    stop_loss Nullable(Float64),
    take_profit Nullable(Float64),
    time_in_force LowCardinality(String),
    expires_at Nullable(DateTime64(3, 'UTC')),
    close_position Nullable(UInt64),
    actor_address String,
    version UInt32,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY order_id;

-- One row per broker deal: the deal's execution_id is derived from the deal number, so a
-- deal written twice collapses into one row.
CREATE TABLE IF NOT EXISTS {db}.executions
(
    execution_id UUID,
    order_id Nullable(UUID),
    fill_price Float64,
    fill_quantity Float64,
    slippage Nullable(Float64),
    commission Float64,
    execution_timestamp DateTime64(3, 'UTC'),
    deal UInt64,
    ticket UInt64,
    position_ticket UInt64,
    symbol LowCardinality(String),
    side Enum8('buy' = 1, 'sell' = 2),
    expected_price Nullable(Float64),
    slippage_pips Nullable(Float64),
    swap Float64,
    entry Enum8('in' = 1, 'out' = 2),
    reason Enum8('client' = 1, 'sl' = 2, 'tp' = 3, 'stop_out' = 4),
    actor_address String,
    recorded_at DateTime64(3, 'UTC'),
    payload String
)
ENGINE = ReplacingMergeTree
ORDER BY execution_id;

CREATE TABLE IF NOT EXISTS {db}.positions
(
    position_id UUID,
    opened_at DateTime64(3, 'UTC'),
    symbol LowCardinality(String),
    side Enum8('long' = 1, 'short' = 2),
    quantity Float64,
    entry_price Float64,
    stop_loss Nullable(Float64),
    take_profit Nullable(Float64),
    position_status Enum8('open' = 1, 'closed' = 2),
    current_price Nullable(Float64),
    unrealized_pnl Float64,
    realized_pnl Float64,
    commission_total Float64,
    exit_price Nullable(Float64),
    exit_reason Nullable(Enum8('take_profit' = 1, 'stop_loss' = 2, 'manual' = 3, 'signal' = 4)),
    closed_at Nullable(DateTime64(3, 'UTC')),
    r_multiple Nullable(Float64),
    holding_period_hours Nullable(Float64),
    entry_order_id Nullable(UUID),
    exit_order_id Nullable(UUID),
    ticket UInt64,
    closed_quantity Float64,
    updated_at DateTime64(6, 'UTC')
)
ENGINE = ReplacingMergeTree(updated_at)
ORDER BY position_id;

-- Append-only lifecycle: every event of every order with its full snapshot (payload, JSON),
-- which is what recovery folds. A rewritten event collapses on (order_id, seq).
CREATE TABLE IF NOT EXISTS {db}.order_events
(
    event_id String,
    order_id UUID,
    seq UInt32,
    kind LowCardinality(String),
    order_status Enum8('pending' = 1, 'submitted' = 2, 'partially_filled' = 3, 'filled' = 4,
                       'cancelled' = 5, 'rejected' = 6, 'failed' = 7),
    signal_id UUID,
    symbol LowCardinality(String),
    at DateTime64(3, 'UTC'),
    actor_address String,
    detail Nullable(String),
    payload String
)
ENGINE = ReplacingMergeTree
ORDER BY (order_id, seq);

-- Upstream's table (risk-management writes it); created here for development and tests.
CREATE TABLE IF NOT EXISTS {db}.trading_signals
(
    signal_id UUID,
    symbol LowCardinality(String),
    timeframe String,
    signal_type Enum8('buy' = 1, 'sell' = 2, 'close_long' = 3, 'close_short' = 4, 'hold' = 5),
    position_size_recommended Nullable(Float64),
    entry_price Nullable(Float64),
    stop_loss Nullable(Float64),
    take_profit Nullable(Float64),
    risk_approval_status Enum8('approved' = 1, 'pending' = 2, 'rejected' = 3),
    signal_timestamp DateTime64(3, 'UTC'),
    created_at DateTime64(3, 'UTC'),
    model_version String,
    confidence_score Nullable(Float64)
)
ENGINE = MergeTree
ORDER BY (symbol, signal_timestamp, signal_id);
