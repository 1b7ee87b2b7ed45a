"""Offline batch work with the service's own pipelines, without the server (`fmu-live track`)."""
