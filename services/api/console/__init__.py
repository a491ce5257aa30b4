"""The web console (/ui): server-rendered pages over the same services as the API, signed in with an
API key that becomes a session cookie."""
