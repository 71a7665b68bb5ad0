"""modelplane operator: turns ModelDeployments into running inference services."""
