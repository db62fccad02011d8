"""One module per actor role; lifecycle.py and loop.py are the pure state machine and the
asyncio bridge the roles share."""
