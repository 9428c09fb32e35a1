"""Ray Serve deployments: thin wiring of serve_app's pure logic to Serve."""
