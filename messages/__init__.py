"""The service's contract, readable on its own.

- signal: what risk-management sends (``signals.approved.{symbol}``) and when it is executable.
- order: orders, fills, lifecycle events (the Kafka archive record), status messages, dead letters.
- broker: the mt5-connector contract: order requests, fills, errors and the project's additions.
- position: positions and reconciliation alerts.
- actor: the messages the actors send one another.
- control: the trading halt and the service's health, as the operator commands ask for them.
- enums, symbols, codec: shared vocabulary, the instrument catalogue, strict decoding.
"""
