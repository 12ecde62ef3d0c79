"""rrproxy's benchmark: the same streaming load through a direct connection, a bare aiohttp
pass-through and rrproxy in each mode, reported side by side. Run with ``python -m bench``."""
