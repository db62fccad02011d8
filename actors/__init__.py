"""One module per actor role, each thin: the decisions are in model/, the wire formats in
service/ and messages/; loop.py is the asyncio bridge the I/O roles share."""
