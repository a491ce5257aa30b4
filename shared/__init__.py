"""Code shared by the RecForge services: settings, database models, job contract, errors."""
