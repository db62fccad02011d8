-- The schema the service runs on, applied at every start after the migrations: every object
-- IF NOT EXISTS, so whatever is missing (dropped by hand, say) comes back, whatever the
-- migration log says. It must stay what the migrations make of an older database
-- (tests/test_store.py compares the two).
CREATE DATABASE IF NOT EXISTS {db};

-- Every version of every order, as the service writes them; the latest version wins.
CREATE TABLE IF NOT EXISTS {db}.order_versions
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
    slippage_pips Nullable(Float64),
    stop_loss Nullable(Float64),
    take_profit Nullable(Float64),
    time_in_force LowCardinality(String),
    expires_at Nullable(DateTime64(3, 'UTC')),
    close_position Nullable(UInt64),
    signal_fingerprint String,
    actor_address String,
    version UInt32,
    updated_at DateTime64(3, 'UTC')
)
ENGINE = ReplacingMergeTree(version)
ORDER BY order_id;

-- One row per broker deal: the deal's execution_id is derived from the deal number, so a
-- deal written twice (a retried batch) collapses into one row.
CREATE TABLE IF NOT EXISTS {db}.execution_records
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

-- Every write of every position by the position keeper; the latest write wins.
CREATE TABLE IF NOT EXISTS {db}.position_versions
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

-- The trading control (execution-service halt / resume): one row per change, the highest
-- version in force, so a halt survives a restart and every halt stays on record.
CREATE TABLE IF NOT EXISTS {db}.execution_control
(
    version UInt64,
    halted Bool,
    halt_id Nullable(UUID),
    reason String,
    halted_since Nullable(DateTime64(3, 'UTC')),
    changed_at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY version;

-- Instances that share the work (partitions): how far each partition's events are confirmed by
-- every sink (Kafka, NATS). The instance that takes a partition over publishes again whatever
-- was recorded after the last of these, which its previous owner may not have got out.
CREATE TABLE IF NOT EXISTS {db}.partition_checkpoints
(
    partition UInt16,
    confirmed_before DateTime64(3, 'UTC'),
    instance String,
    at DateTime64(3, 'UTC')
)
ENGINE = MergeTree
ORDER BY (partition, at)
TTL toDateTime(at) + INTERVAL 7 DAY;

-- What other services read, under upstream's names (docs/table_database_trading.md): one row
-- per order, execution and position for a plain query (no FINAL, no argMax), upstream's
-- columns with upstream's types in upstream's order, then ours.
CREATE VIEW IF NOT EXISTS {db}.orders AS
SELECT
    order_id,
    created_at,
    signal_id,
    CAST(symbol AS String) AS symbol,
    timeframe,
    order_type,
    side,
    quantity,
    price,
    stop_price,
    order_status,
    broker_order_id,
    broker,
    submitted_at,
    filled_at,
    cancelled_at,
    CAST(filled_quantity AS Nullable(Float64)) AS filled_quantity,
    average_fill_price,
    commission,
    rejection_reason,
    error_message,
    -- the names upstream's execution skill queries
    upper(toString(order_status)) AS state,
    expected_price AS entry_price,
    average_fill_price AS fill_price,
    slippage_pips,
    expected_price,
    stop_loss,
    take_profit,
    time_in_force,
    expires_at,
    close_position,
    signal_fingerprint,
    actor_address,
    version,
    updated_at
FROM {db}.order_versions FINAL;

-- Upstream documents no DDL for executions, only its key columns: those first.
CREATE VIEW IF NOT EXISTS {db}.executions AS
SELECT
    execution_id,
    order_id,
    fill_price,
    fill_quantity,
    slippage,
    commission,
    execution_timestamp,
    slippage_pips,
    deal,
    ticket,
    position_ticket,
    CAST(symbol AS String) AS symbol,
    side,
    expected_price,
    swap,
    entry,
    reason,
    actor_address,
    recorded_at
FROM {db}.execution_records FINAL;

-- Upstream's stop_loss, take_profit and entry_order_id are not nullable: 0 when there is no
-- stop, the nil UUID for a position opened by no order of ours (found at the broker).
CREATE VIEW IF NOT EXISTS {db}.positions AS
SELECT
    position_id,
    opened_at,
    CAST(symbol AS String) AS symbol,
    side,
    quantity,
    entry_price,
    ifNull(stop_loss, 0.) AS stop_loss,
    ifNull(take_profit, 0.) AS take_profit,
    position_status,
    current_price,
    CAST(unrealized_pnl AS Nullable(Float64)) AS unrealized_pnl,
    CAST(realized_pnl AS Nullable(Float64)) AS realized_pnl,
    commission_total,
    exit_price,
    exit_reason,
    closed_at,
    r_multiple,
    holding_period_hours,
    ifNull(entry_order_id, toUUID('00000000-0000-0000-0000-000000000000')) AS entry_order_id,
    exit_order_id,
    ticket,
    closed_quantity,
    updated_at
FROM {db}.position_versions FINAL;

-- Upstream's table (risk-management writes it; created here for development and tests), its
-- DDL verbatim (docs/table_database_trading.md, Table 1).
CREATE TABLE IF NOT EXISTS {db}.trading_signals
(
    signal_id UUID DEFAULT generateUUIDv4(),
    created_at DateTime64(3, 'UTC') DEFAULT now64(),

    -- Model/Agent Info
    model_checkpoint_id Nullable(UUID),  -- From model_checkpoints
    agent_checkpoint_id Nullable(UUID),  -- From agent_checkpoints
    model_version String,

    -- Market Info
    symbol String,
    timeframe Enum8('5m'=1, '15m'=2, '30m'=3, '1h'=4, '4h'=5, '1d'=6, '1w'=7),
    signal_timestamp DateTime64(3, 'UTC'),

    -- Signal Details
    signal_type Enum8('buy'=1, 'sell'=2, 'hold'=3, 'close_long'=4, 'close_short'=5),
    confidence_score Float64,              -- 0-1
    position_size_recommended Float64,      -- Lot size or % of capital

    -- Price Levels
    entry_price Float64,
    stop_loss Float64,
    take_profit Float64,

    -- Risk Management
    risk_approval_status Enum8('pending'=1, 'approved'=2, 'rejected'=3),
    risk_rejection_reason Nullable(String),
    risk_reviewed_at Nullable(DateTime64(3, 'UTC')),

    -- Execution Status
    execution_status Enum8('pending'=1, 'submitted'=2, 'filled'=3, 'cancelled'=4, 'failed'=5),
    order_id Nullable(UUID),               -- FK to orders table

    -- Metadata
    features_snapshot String,              -- JSON: feature values at signal time
    model_raw_output String                -- JSON: raw model prediction probabilities
)
ENGINE = MergeTree()
PARTITION BY (symbol, toYYYYMM(created_at))
ORDER BY (symbol, created_at, signal_id)
TTL created_at + INTERVAL 1 YEAR;
