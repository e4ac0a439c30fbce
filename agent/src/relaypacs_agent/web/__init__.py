"""The agent's LAN web side: the local API the PWA talks to (login, batches, tus uploads) and
the built PWA itself. Runs inside ``relaypacs-agent run`` on ``web_port``."""
