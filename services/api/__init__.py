"""The project API: projects, people, data, jobs, models and deployments."""
