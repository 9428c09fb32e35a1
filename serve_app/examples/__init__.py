"""Example handler modules shipped with serveflow (loaded only when a pool names them)."""
