"""Upstream's contract as its documentation states it (antisofisme/aitrading, project3/backend,
HEAD 3b916f6): the DDL of docs/table_database_trading.md and the queries of its skills and
guides, verbatim but for trailing blanks, the skill's comment lines and the markdown indent
of the planning guide's query; and a trading_signals row as risk-management would write it.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

# docs/table_database_trading.md, tables 1 (trading_signals), 3 (orders) and 5 (positions).
TRADING_SIGNALS_DDL = """\
CREATE TABLE suho_analytics.trading_signals
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
"""

ORDERS_DDL = """\
CREATE TABLE suho_analytics.orders
(
    order_id UUID DEFAULT generateUUIDv4(),
    created_at DateTime64(3, 'UTC') DEFAULT now64(),

    -- Related Signal
    signal_id UUID,                        -- FK to trading_signals

    -- Market Info
    symbol String,
    timeframe String,

    -- Order Details
    order_type Enum8('market'=1, 'limit'=2, 'stop'=3, 'stop_limit'=4),
    side Enum8('buy'=1, 'sell'=2),
    quantity Float64,                      -- Lot size

    -- Price Details
    price Nullable(Float64),               -- For limit orders
    stop_price Nullable(Float64),          -- For stop orders

    -- Execution
    order_status Enum8(
        'pending'=1,
        'submitted'=2,
        'partially_filled'=3,
        'filled'=4,
        'cancelled'=5,
        'rejected'=6,
        'failed'=7
    ),

    -- Broker Integration
    broker_order_id Nullable(String),      -- MT5 order ID
    broker String DEFAULT 'MT5',

    -- Timestamps
    submitted_at Nullable(DateTime64(3, 'UTC')),
    filled_at Nullable(DateTime64(3, 'UTC')),
    cancelled_at Nullable(DateTime64(3, 'UTC')),

    -- Fill Details
    filled_quantity Nullable(Float64),
    average_fill_price Nullable(Float64),
    commission Nullable(Float64),

    -- Failure Info
    rejection_reason Nullable(String),
    error_message Nullable(String)
)
ENGINE = MergeTree()
PARTITION BY (symbol, toYYYYMM(created_at))
ORDER BY (symbol, created_at, order_id);
"""

POSITIONS_DDL = """\
CREATE TABLE suho_analytics.positions
(
    position_id UUID DEFAULT generateUUIDv4(),
    opened_at DateTime64(3, 'UTC'),

    -- Market Info
    symbol String,

    -- Position Details
    side Enum8('long'=1, 'short'=2),
    quantity Float64,
    entry_price Float64,

    -- Risk Management
    stop_loss Float64,
    take_profit Float64,

    -- Current State
    position_status Enum8('open'=1, 'closed'=2),
    current_price Nullable(Float64),

    -- P&L
    unrealized_pnl Nullable(Float64),      -- For open positions
    realized_pnl Nullable(Float64),        -- For closed positions
    commission_total Float64,

    -- Closing Info
    exit_price Nullable(Float64),
    exit_reason Nullable(Enum8('take_profit'=1, 'stop_loss'=2, 'manual'=3, 'signal'=4)),
    closed_at Nullable(DateTime64(3, 'UTC')),

    -- Performance Metrics
    r_multiple Nullable(Float64),          -- Reward/Risk ratio
    holding_period_hours Nullable(Float64),

    -- Related Orders
    entry_order_id UUID,
    exit_order_id Nullable(UUID)
)
ENGINE = MergeTree()
PARTITION BY (symbol, toYYYYMM(opened_at))
ORDER BY (symbol, opened_at, position_id);
"""

# docs/table_database_trading.md, Query Examples (the ones on our tables).
ACTIVE_POSITIONS = """\
SELECT
    symbol,
    side,
    quantity,
    entry_price,
    current_price,
    unrealized_pnl,
    ROUND((current_price - entry_price) / (entry_price - stop_loss), 2) as r_multiple
FROM positions
WHERE position_status = 'open'
ORDER BY unrealized_pnl DESC;
"""

RECENT_TRADES = """\
SELECT
    p.symbol,
    p.side,
    p.entry_price,
    p.exit_price,
    p.realized_pnl,
    p.r_multiple,
    p.exit_reason
FROM positions p
WHERE p.position_status = 'closed'
  AND p.closed_at >= now() - INTERVAL 7 DAY
ORDER BY p.closed_at DESC
LIMIT 20;
"""

# .claude/skills/execution/SKILL.md, Example 4: Query Orders and Executions.
RECENT_ORDERS = """\
SELECT
    order_id,
    signal_id,
    symbol,
    order_type,
    state,
    entry_price,
    fill_price,
    slippage_pips,
    created_at,
    filled_at
FROM orders
WHERE created_at > now() - INTERVAL 1 DAY
ORDER BY created_at DESC
LIMIT 20;
"""

FILL_RATE = """\
SELECT
    COUNT(CASE WHEN state = 'FILLED' THEN 1 END) as filled,
    COUNT(CASE WHEN state = 'REJECTED' THEN 1 END) as rejected,
    COUNT(CASE WHEN state = 'CANCELLED' THEN 1 END) as cancelled,
    (COUNT(CASE WHEN state = 'FILLED' THEN 1 END) * 100.0 / COUNT(*)) as fill_rate_pct
FROM orders
WHERE created_at > now() - INTERVAL 7 DAY;
"""

AVERAGE_SLIPPAGE = """\
SELECT
    symbol,
    AVG(slippage_pips) as avg_slippage,
    STDDEV(slippage_pips) as slippage_stddev,
    MAX(ABS(slippage_pips)) as max_slippage
FROM orders
WHERE state = 'FILLED'
  AND created_at > now() - INTERVAL 30 DAY
GROUP BY symbol
ORDER BY avg_slippage DESC;
"""

# docs/PLANNING_SKILL_GUIDE.md: execution-service's plan, step 1; performance-monitoring's daily PnL.
APPROVED_SIGNAL = """\
SELECT * FROM trading_signals
WHERE signal_id = %(signal_id)s
  AND risk_approval_status = 'approved'
  AND execution_status = 'pending';
"""

DAILY_PNL = """\
SELECT
    toDate(closed_at) as date,
    SUM(realized_pnl) as daily_pnl
FROM positions
WHERE position_status = 'closed'
GROUP BY date
ORDER BY date;
"""


def trading_signal_row(
    signal_id: uuid.UUID | str,
    risk_approval_status: str = "approved",
    execution_status: str = "pending",
    symbol: str = "EURUSD",
    signal_type: str = "buy",
) -> dict[str, Any]:
    """One row of upstream's trading_signals, every column of its DDL given."""
    now = datetime.now(UTC)
    return {
        "signal_id": uuid.UUID(str(signal_id)),
        "created_at": now,
        "model_checkpoint_id": None,
        "agent_checkpoint_id": None,
        "model_version": "v1",
        "symbol": symbol,
        "timeframe": "1h",
        "signal_timestamp": now,
        "signal_type": signal_type,
        "confidence_score": 0.7,
        "position_size_recommended": 0.1,
        "entry_price": 1.085,
        "stop_loss": 1.08,
        "take_profit": 1.095,
        "risk_approval_status": risk_approval_status,
        "risk_rejection_reason": None,
        "risk_reviewed_at": now,
        "execution_status": execution_status,
        "order_id": None,
        "features_snapshot": "{}",
        "model_raw_output": "{}",
    }
