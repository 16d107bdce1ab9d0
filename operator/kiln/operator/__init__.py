"""The Kiln operator: OptimizedModel -> builder Jobs per target -> Deployments -> status."""
