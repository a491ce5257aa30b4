"""Project webhooks: hooks that subscribe to events of the continuous-learning loop, and their
signed, retried deliveries."""
