"""The simulated mt5-connector (paper broker): the real connector's NATS contract over a simulated market.

- market: quotes, random walk / CSV replay, depth ladder, session hours, clock.
- book: orders, pending orders, hedging positions, account (pure logic).
- faults: the fault switches and the wire (drop, duplicate, reorder).
- control: the ``sim.control`` messages (switches at run time, driving the market, discrepancies).
- connector: the NATS I/O. config: flags and environment. state: the state file.
- ``python -m simulator`` runs it; ``python -m simulator.throughput`` measures it.
"""
