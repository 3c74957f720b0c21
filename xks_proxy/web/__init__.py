"""The HTTP layer: aiohttp application, XKS endpoint and server runner."""
