"""Serving: engines that load deployed models, and the supervisor that runs them for the server."""
