"""Adapters the actors stand on: settings, the ClickHouse store, NATS streams, Kafka, the CLI."""
