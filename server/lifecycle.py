"""Graceful shutdown under uvicorn: SIGTERM drains before the server stops.

On the first SIGTERM (or SIGINT) the engine stops admitting work, so /readyz answers
503 and new generation requests get 503 + Retry-After while the listening socket stays
open (a load balancer sees the probe fail and moves traffic away). Accepted work (queued
and running jobs, sync or async) carries on; once it is done, or TRDQ_SHUTDOWN_GRACE_S
has passed, uvicorn's own shutdown runs: it lets open responses finish, then the
lifespan fails whatever is left with 503. A second signal stops at once.
"""

from __future__ import annotations

import logging
import time

import uvicorn

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, engine, grace_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.grace_s = grace_s
        self.drain_deadline: float | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if self.drain_deadline is None and not self.should_exit:
            # Only note it here (this runs inside a signal handler); on_tick acts on it.
            self.drain_deadline = time.monotonic() + self.grace_s
            return
        super().handle_exit(sig, frame)  # a second signal: stop now

    async def on_tick(self, counter: int) -> bool:
        if self.drain_deadline is not None and not self.should_exit:
            if self.engine.accepting:
                self.engine.begin_drain()
                logger.info("signal received: draining for up to %.0f s", self.grace_s)
            if self.engine.idle:
                logger.info("drained; shutting down")
                self.should_exit = True
            elif time.monotonic() >= self.drain_deadline:
                logger.warning("grace period over with work unfinished; shutting down")
                self.should_exit = True
        return await super().on_tick(counter)


def serve(app, host: str, port: int, log_level: str, grace_s: float) -> None:
    """Run the app with uvicorn and the draining shutdown; returns after a clean exit."""
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level,
        timeout_graceful_shutdown=max(5, int(grace_s)),
    )
    # The first signal is handled here and not recorded by uvicorn, so a drained server
    # exits 0; uvicorn re-raises only a second signal (ending the process with it).
    DrainingServer(config, app.state.engine, grace_s).run()
